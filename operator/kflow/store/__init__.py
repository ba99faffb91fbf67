"""kflow's durable state in PostgreSQL: the only package that talks to asyncpg."""

from kflow.store.postgres import Database, SendResult, Store

__all__ = ["Database", "SendResult", "Store"]

"""kflow's durable state in PostgreSQL: the only package that talks to asyncpg."""

from kflow.store.inbox import SendResult
from kflow.store.postgres import Database, Store

__all__ = ["Database", "SendResult", "Store"]

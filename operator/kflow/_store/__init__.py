"""kflow's durable state in PostgreSQL: the only package that talks to asyncpg."""

from kflow._store.inbox import SendResult
from kflow._store.postgres import Database, Store

__all__ = ["Database", "SendResult", "Store"]

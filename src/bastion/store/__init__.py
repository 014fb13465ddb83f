"""The event/alert store (SQLite, WAL) and its schema migrations."""

from bastion.store.db import (
    DB_NAME,
    SEVERITIES,
    Retention,
    Store,
    StoredRecord,
    StoreNotFoundError,
    StoreStats,
    severity_rank,
)
from bastion.store.schema import MIGRATIONS, SCHEMA_VERSION

__all__ = [
    "DB_NAME",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SEVERITIES",
    "Retention",
    "Store",
    "StoreNotFoundError",
    "StoreStats",
    "StoredRecord",
    "severity_rank",
]

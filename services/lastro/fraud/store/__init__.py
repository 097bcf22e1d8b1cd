"""The fraud service's storage: PostgreSQL (decisions, alerts, outbox, inbox, audit
log) in :mod:`.tables` and :mod:`.queries`, and the Redis profiles in :mod:`.profiles`."""

from lastro.fraud.store.tables import MIGRATIONS, SCHEMA, bind_schema, schema_metadata

__all__ = ["MIGRATIONS", "SCHEMA", "bind_schema", "schema_metadata"]

"""The fraud service's storage: PostgreSQL (decisions, alerts, outbox, inbox, audit
log) in :mod:`.tables` and :mod:`.queries`, and the Redis profiles in :mod:`.profiles`."""

"""Alembic environment shared by every service.

`lastro.core.db.migrate` hands over an open connection and the service's schema
through ``config.attributes``; the version table lives in that schema, so each
service migrates independently.
"""

from alembic import context

config = context.config
connection = config.attributes["connection"]
schema = config.attributes["schema"]

connection.exec_driver_sql(f'SET LOCAL search_path TO "{schema}", public')
context.configure(
    connection=connection,
    version_table_schema=schema,
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()

"""Alembic's environment: the migrations run on the connection `state.schema` hands over, inside
its transaction (alembic is configured in code, there is no alembic.ini)."""

from alembic import context

from newsletter_pipelines.state.schema import VERSION_TABLE

context.configure(connection=context.config.attributes["connection"], version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()

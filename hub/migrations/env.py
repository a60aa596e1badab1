"""Alembic environment: runs against the engine the hub hands over (see hub.migrate)."""

from __future__ import annotations

from alembic import context

from hub.model import metadata

engine = context.config.attributes.get("engine")
if engine is None:  # invoked by the alembic CLI: build an engine from the hub's settings
    from hub.config import load_settings
    from hub.db import make_engine

    engine = make_engine(load_settings().database_url)

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copy
        compare_type=True,
    )
    context.run_migrations()

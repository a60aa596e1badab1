"""Schema migrations: the migrated schema is exactly the model, on both backends."""

from sqlalchemy import inspect

from hub.db import make_engine
from hub.migrate import current_revision, head_revision, pending_model_changes, upgrade
from hub.model import metadata


def test_migrations_produce_the_model_schema(database_url):
    engine = make_engine(database_url)
    assert current_revision(engine) == head_revision(engine)
    assert pending_model_changes(engine) == [], "the model changed without a migration"
    assert set(metadata.tables) <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_upgrade_on_a_current_database_keeps_its_data(hub, catalog):
    before = hub.admin.list_head_ends(10, 0)
    upgrade(hub.db.engine)
    assert hub.admin.list_head_ends(10, 0) == before


def test_sqlite_runs_in_wal_mode(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()

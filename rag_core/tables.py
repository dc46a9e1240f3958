"""Creating the SQL tables of the catalog and the serving database, safely from several processes, and adding
the nullable columns a table gained since it was first created (`create_all` never alters a table)."""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa

log = logging.getLogger(__name__)


def create_tables(metadata: sa.MetaData, engine: sa.Engine, attempts: int = 5) -> None:
    """`create_all`, tolerating another process creating the same tables at the same moment (API workers
    start together): PostgreSQL then reports a duplicate type or table, SQLite a table that already exists,
    and a second look finds them."""
    for attempt in range(attempts):
        try:
            metadata.create_all(engine)
            break
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    for added in add_missing_columns(metadata, engine):
        log.info("added the column %s to an existing table", added)


def add_missing_columns(metadata: sa.MetaData, engine: sa.Engine) -> list[str]:
    """`ALTER TABLE … ADD COLUMN` for each column of `metadata` an existing table lacks (SQLite and PostgreSQL);
    returns them as `table.column`. Only nullable columns can be added: the rows already there have no value."""
    added = []
    inspector = sa.inspect(engine)
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise RuntimeError(
                    f"{table.name} lacks the NOT NULL column {column.name}, which cannot be added to existing rows "
                    "— make the column nullable in the code, or migrate the table by hand"
                )
            _add_column(engine, table, column)
            added.append(f"{table.name}.{column.name}")
    return added


def _add_column(engine: sa.Engine, table: sa.Table, column: sa.Column) -> None:
    preparer = engine.dialect.identifier_preparer
    ddl = (
        f"ALTER TABLE {preparer.format_table(table)} ADD COLUMN {preparer.format_column(column)} "
        f"{column.type.compile(dialect=engine.dialect)}"
    )
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(ddl))
    except (sa.exc.OperationalError, sa.exc.ProgrammingError):
        # Another process (API workers start together) added it a moment ago: then it is there now.
        if column.name not in {found["name"] for found in sa.inspect(engine).get_columns(table.name)}:
            raise

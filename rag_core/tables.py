"""Creating the SQL tables of the catalog and the serving database, safely from several processes."""

from __future__ import annotations

import time

import sqlalchemy as sa


def create_tables(metadata: sa.MetaData, engine: sa.Engine, attempts: int = 5) -> None:
    """`create_all`, tolerating another process creating the same tables at the same moment (API workers
    start together): PostgreSQL then reports a duplicate type or table, and a second look finds them."""
    for attempt in range(attempts):
        try:
            metadata.create_all(engine)
            return
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))

"""A throwaway database for the benchmarks that need one, with Django set up on it."""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def throwaway_database(name: str) -> Iterator[Path]:
    """Set Django up on a database of its own: ``<name>_bench`` beside DATABASE_URL's when
    that is PostgreSQL (made, migrated, and dropped afterwards), else SQLite in a temporary
    folder. Yields that folder, the benchmark's HASHGUARD_DATA_DIR."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"hashguard-bench-{name}-"))
    os.environ["HASHGUARD_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench")
    os.environ["HASHGUARD_LOG_LEVEL"] = "WARNING"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    url = os.environ.get("DATABASE_URL", "")
    postgres = url.startswith("postgres")
    if postgres:
        base, database = url.rsplit("/", 1)
        os.environ["DATABASE_URL"] = f"{base}/{database.split('?')[0]}_bench"
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    try:
        if postgres:
            _run_without_database(connection, "DROP DATABASE IF EXISTS {}")
            _run_without_database(connection, "CREATE DATABASE {}")
        call_command("migrate", verbosity=0)
        yield data_dir
    finally:
        if postgres:
            connection.close()
            _run_without_database(connection, "DROP DATABASE IF EXISTS {}")
        shutil.rmtree(data_dir, ignore_errors=True)


def _run_without_database(connection: object, statement: str) -> None:
    name = connection.settings_dict["NAME"]  # type: ignore[attr-defined]
    with connection._nodb_cursor() as cursor:  # type: ignore[attr-defined]
        cursor.execute(statement.format(connection.ops.quote_name(name)))  # type: ignore[attr-defined]

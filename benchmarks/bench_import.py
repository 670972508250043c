"""How fast a hash list imports into a bank, beside reading the list alone.

    DATABASE_URL=postgres://... .venv/bin/python -m benchmarks.bench_import [--lines 1000000]

Writes a list of random PDQ hashes in HMA's format, then times reading it (parsing and
checking every line, the baseline: the least any import does) and importing it into a
fresh bank of a throwaway database: PostgreSQL when DATABASE_URL names one (a database
``<name>_bench`` beside it is made and dropped), else SQLite in a temporary folder.
Re-importing the same list (all unchanged) is timed too, and the resident memory the
first import grew by at its peak (the list is streamed; what grows is what it remembers of
the hashes seen). Figures only.
"""

import argparse
import random
import resource
import time

from benchmarks.bench_index import rss_mb
from benchmarks.database import throwaway_database


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    with throwaway_database("import") as data_dir:
        from django.db import connection

        from hashes.hashlists import read
        from moderation import services

        rng = random.Random(1)
        path = data_dir / "list.txt"
        with path.open("w") as out:
            for _ in range(args.lines):
                out.write(f"pdq {rng.randbytes(32).hex()}\n")
        started = time.perf_counter()
        with path.open() as lines:
            parsed = sum(1 for _ in read(lines, "hma"))
        parse = time.perf_counter() - started
        before = rss_mb()
        started = time.perf_counter()
        with path.open() as lines:
            report = services.bank_import(lines=lines, bank="bench", fmt="hma")
        full = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
        started = time.perf_counter()
        with path.open() as lines:
            again = services.bank_import(lines=lines, bank="bench", fmt="hma")
        repeat = time.perf_counter() - started
        engine = connection.vendor
        print(f"{args.lines:,} PDQ lines (HMA format) into {engine}:")
        print(f"  reading the list alone: {parse:6.1f} s  ({parsed / parse:,.0f} lines/s)")
        print(
            f"  importing it:           {full:6.1f} s  ({args.lines / full:,.0f} lines/s, "
            f"{full / parse:.1f}x reading); {report.summary()}; memory +{peak:.0f} MB at its peak"
        )
        print(
            f"  importing it again:     {repeat:6.1f} s  ({repeat / parse:.1f}x reading); "
            f"{again.unchanged:,} unchanged"
        )


if __name__ == "__main__":
    main()

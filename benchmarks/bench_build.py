"""How long a process takes to build its blocklist from a database of hash-only bans:
the hashes read as PostgreSQL's joined columns (the default there: the id range in parts
at once, and in one part) beside a row at a time through a cursor (as before, and as
other databases read them), in the same run.

    DATABASE_URL=postgres://... .venv/bin/python -m benchmarks.bench_build \
        [--bans 3000000] [--rounds 2]

Bans --bans random hashes, a third each PDQ, pHash and dHash, in a throwaway database as
``bench_worker_memory`` does, then builds the blocklist --rounds times each way,
alternately, and prints the fastest of each and the time spent reading the rows alone.
"""

import argparse
import gc
import time
from collections.abc import Callable
from unittest import mock

from benchmarks.bench_worker_memory import insert_bans
from benchmarks.database import throwaway_database


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bans", type=int, default=3_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with throwaway_database("build"):
        from django.db import connection

        from moderation import blocklist, hash_rows
        from moderation.models import HASH_ONLY, BannedFingerprint

        if connection.vendor != "postgresql":
            raise SystemExit("bench_build compares PostgreSQL's two ways: set DATABASE_URL")
        started = time.perf_counter()
        insert_bans(args.bans)
        print(f"{args.bans:,} bans written in {time.perf_counter() - started:.0f} s")
        rows = BannedFingerprint.objects.filter(HASH_ONLY, active=True)
        ways = {
            f"joined, {hash_rows.READERS} parts": (hash_rows.joined_rows, hash_rows.READERS),
            "joined, 1 part": (hash_rows.joined_rows, 1),
            "a row at a time": (hash_rows.fetched_rows, hash_rows.READERS),
        }
        builds: dict[str, list[float]] = {name: [] for name in ways}
        reads: dict[str, list[float]] = {name: [] for name in ways}
        gc.disable()  # as a build does
        for _ in range(args.rounds):
            for name, (reader, readers) in ways.items():
                with (
                    mock.patch.object(hash_rows, "joined_rows", reader),
                    mock.patch.object(hash_rows, "READERS", readers),
                ):
                    reads[name].append(_timed(lambda: sum(1 for _ in hash_rows.hash_rows(rows))))
                    builds[name].append(_timed(blocklist.build_blocklist))
        base_build, base_read = min(builds["a row at a time"]), min(reads["a row at a time"])
        print(f"Building the blocklist of {args.bans:,} bans (fastest of {args.rounds}):")
        for name in ways:
            build, read = min(builds[name]), min(reads[name])
            print(
                f"  {name:<16}: build {build:6.1f} s ({build / base_build:.2f}x), "
                f"reading the rows alone {read:6.1f} s ({read / base_read:.2f}x)"
            )


if __name__ == "__main__":
    main()

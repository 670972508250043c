"""Memory of a whole worker (its main process and 2 pool processes) holding a large
blocklist, with the blocklist built once before the pool forks (the default) beside each
pool process building its own (HASHGUARD_PRELOAD_BLOCKLIST=false), in the same run.

    DATABASE_URL=postgres://... .venv/bin/python -m benchmarks.bench_worker_memory \
        [--bans 1000000] [--redis URL] [--images DIR]

Bans --bans random hashes, a third each PDQ, pHash and dHash, in a throwaway database
(on PostgreSQL one imported row of each kind is copied with other hashes by one INSERT,
minutes where importing tens of millions of lines takes hours; elsewhere the list is
imported); starts a real watcher and Celery worker (prefork, 2 processes); drops images
until both pool processes have checked one (and so hold the blocklist); then reads each
process's resident (RSS) and proportional (PSS: shared pages split between the processes
sharing them) memory from /proc. The sum of PSS is what the machine spends. With the
blocklist built before the fork, it then makes a wide change (a bank made), after which
each pool process builds its own, and reads the machine again.
"""

import argparse
import hashlib
import random
import shutil
import time
from pathlib import Path

from benchmarks.database import throwaway_database

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("pdq", "phash", "dhash")


def _memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB as /proc counts them (2**20 bytes)."""
    found = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss"):
                found[name] = int(rest.split()[0]) / 1024
    return found["Rss"], found["Pss"]


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as listed:
        return [int(child) for child in listed.read().split()]


def _measure(data_dir: Path, images: list[Path], preload: bool, redis: str | None) -> list[str]:
    from moderation import services
    from moderation.blocklist import current_version
    from moderation.models import Bank, BlocklistLoad, Upload
    from tests.moderation.processes import Stack, database_url, wait_for

    BlocklistLoad.objects.all().delete()
    stack = Stack(
        data_dir,
        database_url=database_url(),
        broker_url=redis or "filesystem://",
        HASHGUARD_PRELOAD_BLOCKLIST="true" if preload else "false",
        HASHGUARD_LOG_LEVEL="INFO",
    )
    media = data_dir / "media"
    media.mkdir(exist_ok=True)
    try:
        started = time.perf_counter()
        # A preloading worker is ready once it has built the blocklist.
        worker = stack.worker(concurrency=2, timeout=3600)
        ready = time.perf_counter() - started
        stack.watcher()
        pool = _children(worker.popen.pid)
        dropped = 0

        def all_hold(version: str) -> bool:
            """Whether both pool processes hold ``version``; if not, one more file."""
            nonlocal dropped
            processes = {
                int(name.rsplit(":", 1)[1])
                for name in BlocklistLoad.objects.filter(version=version).values_list(
                    "process", flat=True
                )
            }
            if set(pool) <= processes:
                return True
            path = images[dropped % len(images)]
            shutil.copy(path, media / f"{'on' if preload else 'off'}-{dropped}{path.suffix}")
            dropped += 1
            return False

        def settled() -> bool:
            busy = [Upload.State.PENDING, Upload.State.PROCESSING]
            return not Upload.objects.filter(state__in=busy).exists()

        wait_for(
            lambda: all_hold(current_version()),
            timeout=3600,
            what="both pool processes to check a file",
        )
        wait_for(settled, timeout=600, what="the files dropped to be decided")
        figures = [_memory(pid) for pid in (worker.popen.pid, *pool)]
        builds = len(set(BlocklistLoad.objects.values_list("built_at", flat=True)))
        label = "built before the fork" if preload else "built by each process"
        lines = [_line(label, figures, f"ready in {ready:.0f} s; {builds} build(s) held")]
        if preload:
            # A wide change (a bank made or changed, a wide import, a rehash): every
            # process builds its blocklist again.
            services.bank_save(bank=Bank(name="another"), changed=None, actor=None)
            started = time.perf_counter()
            wait_for(
                lambda: all_hold(current_version()),
                timeout=3600,
                what="both pool processes to build again",
            )
            wait_for(settled, timeout=600, what="the files dropped to be decided")
            rebuilt = time.perf_counter() - started
            figures = [_memory(pid) for pid in (worker.popen.pid, *pool)]
            lines.append(_line("after a wide change", figures, f"rebuilt in {rebuilt:.0f} s"))
    finally:
        stack.stop()
    return lines


def _line(label: str, figures: list[tuple[float, float]], more: str) -> str:
    total_rss = sum(rss for rss, _ in figures)
    total_pss = sum(pss for _, pss in figures)
    parts = ", ".join(f"{rss:.0f}/{pss:.0f}" for rss, pss in figures)
    return (
        f"  {label:<22}: machine spends {total_pss:6.0f} MB (sum of PSS; "
        f"{total_pss * 2**20 / 1e9:.2f} GB in powers of ten); RSS summed "
        f"{total_rss:6.0f} MB; main, pool, pool RSS/PSS {parts}; {more}"
    )


def insert_bans(bans: int) -> None:
    """Import one hash of each kind, then copy its row with other, random-looking hashes
    (from SHA-256 and MD5 of a counter) until there are ``bans``, and vacuum the table."""
    from django.db import connection

    from moderation import services
    from moderation.models import BannedFingerprint

    digits = {"pdq": 64, "phash": 16, "dhash": 16}
    templates = [
        f"{kind} {hashlib.sha256(kind.encode()).hexdigest()[: digits[kind]]}" for kind in KINDS
    ]
    services.bank_import(lines=templates, bank="bench", fmt="hma")
    table = connection.ops.quote_name(BannedFingerprint._meta.db_table)
    fields = [f.column for f in BannedFingerprint._meta.concrete_fields if not f.primary_key]
    for index, kind in enumerate(KINDS):
        count = bans // 3 + (index < bans % 3) - 1
        made = (
            "encode(sha256(('pdq' || g)::text::bytea), 'hex')"
            if kind == "pdq"
            else f"substr(md5('{kind}' || g), 1, 16)"
        )
        values = ", ".join(made if column == kind else f"b.{column}" for column in fields)
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(fields)}) SELECT {values} "
                f"FROM {table} b, generate_series(1, %s) g WHERE b.{kind} <> ''",
                [count],
            )
            cursor.execute(f"ANALYZE {table}")
    with connection.cursor() as cursor:
        # Settled, as workers find a database when they start: otherwise the first reads
        # of the new rows also write their hint bits, and autovacuum visits them, both
        # while a benchmark measures.
        cursor.execute(f"VACUUM {table}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bans", type=int, default=1_000_000)
    parser.add_argument("--redis", help="a Redis URL for the broker (default: file broker)")
    parser.add_argument("--images", type=Path, default=ROOT / "tests" / "fixtures")
    args = parser.parse_args()
    images = sorted(
        path for path in args.images.rglob("*") if path.suffix.lower() in {".jpg", ".png"}
    )[:8]
    with throwaway_database("worker") as data_dir:
        from django.db import connection

        from moderation import services

        started = time.perf_counter()
        if connection.vendor == "postgresql":
            insert_bans(args.bans)
        else:
            rng = random.Random(1)
            lines = (
                f"{kind} {rng.randbytes(32 if kind == 'pdq' else 8).hex()}\n"
                for index in range(args.bans)
                for kind in (KINDS[index % 3],)
            )
            services.bank_import(lines=lines, bank="bench", fmt="hma")
        print(f"{args.bans:,} bans written in {time.perf_counter() - started:.0f} s")
        connection.close()
        print("A worker with 2 pool processes, each holding the blocklist:")
        for preload in (True, False):
            for line in _measure(data_dir, images, preload, args.redis):
                print(line, flush=True)


if __name__ == "__main__":
    main()

"""Memory of a whole worker (its main process and 2 pool processes) holding a large
blocklist, before and after a wide change: this code beside the code of ``--baseline`` (a
git revision; by default the last before the machine's processes shared one saved
blocklist, where after a wide change each pool process built a copy of its own while the
main process kept the first), in the same run, on the same database.

    DATABASE_URL=postgres://... .venv/bin/python -m benchmarks.bench_worker_memory \
        [--bans 1000000] [--redis URL] [--images DIR] [--baseline REV]

Bans --bans random hashes, a third each PDQ, pHash and dHash, in a throwaway database
(on PostgreSQL one imported row of each kind is copied with other hashes by one INSERT,
minutes where importing tens of millions of lines takes hours; elsewhere the list is
imported). For each code: starts a real watcher and Celery worker (prefork, 2 processes,
the blocklist preloaded); drops images until both pool processes have checked one (and
so hold the blocklist); reads each process's resident (RSS) and proportional (PSS: shared
pages, a mapped file's included, split between the processes sharing them) memory from
/proc. The sum of PSS is what the machine spends. Then makes a wide change (as a rehash does),
waits until both pool processes hold the new blocklist, and reads the machine again. For
this code, last, restarts the worker: it maps the saved blocklist rather than build it.
"""

import argparse
import hashlib
import random
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from benchmarks.database import throwaway_database

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("pdq", "phash", "dhash")
# The last commit whose pool processes each built their own blocklist after a wide change.
BASELINE = "6ab68d9"


def _memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB as /proc counts them (2**20 bytes)."""
    found = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss"):
                found[name] = int(rest.split()[0]) / 1024
    return found["Rss"], found["Pss"]


def _measure(
    data_dir: Path, images: list[Path], code: Path, name: str, redis: str | None
) -> list[str]:
    """The machine's memory with the worker of the code in ``code`` holding the blocklist,
    then after a wide change (and, for this code, the time a restarted worker takes to be
    ready)."""
    from moderation import services
    from moderation.blocklist import current_version
    from moderation.models import BlocklistLoad, Upload
    from tests.moderation.processes import Stack, children, database_url, wait_for

    BlocklistLoad.objects.all().delete()
    shutil.rmtree(data_dir / "blocklists", ignore_errors=True)
    stack = Stack(
        data_dir,
        root=code,
        database_url=database_url(),
        broker_url=redis or "filesystem://",
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
        dropped = 0

        def all_hold(version: str) -> bool:
            """Whether both pool processes hold ``version``; if not, one more file."""
            nonlocal dropped
            processes = {
                int(process.rsplit(":", 1)[1])
                for process in BlocklistLoad.objects.filter(version=version).values_list(
                    "process", flat=True
                )
            }
            if set(children(worker.popen.pid)) <= processes:
                return True
            path = images[dropped % len(images)]
            shutil.copy(path, media / f"{name}-{dropped}{path.suffix}")
            dropped += 1
            return False

        def settled() -> bool:
            busy = [Upload.State.PENDING, Upload.State.PROCESSING]
            return not Upload.objects.filter(state__in=busy).exists()

        def machine() -> list[tuple[float, float]]:
            wait_for(
                lambda: all_hold(current_version()),
                timeout=3600,
                what="both pool processes to hold the blocklist",
            )
            wait_for(settled, timeout=600, what="the files dropped to be decided")
            return [_memory(pid) for pid in (worker.popen.pid, *children(worker.popen.pid))]

        lines = [f"{name}:", _line("at start", machine(), f"ready in {ready:.0f} s")]
        # A wide change (a rehash, a wide import, a change to a bank of 5,000 bans or
        # more): the blocklist is built again.
        services.blocklist_bump()
        started = time.perf_counter()
        figures = machine()
        rebuilt = time.perf_counter() - started
        lines.append(_line("after a wide change", figures, f"both switched in {rebuilt:.0f} s"))
        if code == ROOT:
            worker.stop()
            stack.processes.remove(worker)
            started = time.perf_counter()
            worker = stack.worker(concurrency=2, timeout=3600)
            lines.append(f"  restarted: ready in {time.perf_counter() - started:.1f} s")
    finally:
        stack.stop()
    return lines


def _checkout(rev: str, folder: Path) -> Path:
    """The code of ``rev``, taken from git into ``folder``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True)
    if archive.returncode:
        raise SystemExit(f"git archive {rev} failed: {archive.stderr.decode().strip()}")
    tar = folder / "code.tar"
    tar.write_bytes(archive.stdout)
    with tarfile.open(tar) as opened:
        opened.extractall(folder / "code", filter="data")
    return folder / "code"


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
    parser.add_argument("--baseline", default=BASELINE, help=f"a git revision (default {BASELINE})")
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
        with tempfile.TemporaryDirectory(prefix="hashguard-baseline-") as folder:
            baseline = _checkout(args.baseline, Path(folder))
            for code, name in ((baseline, args.baseline), (ROOT, "this code")):
                for line in _measure(data_dir, images, code, name, args.redis):
                    print(line, flush=True)


if __name__ == "__main__":
    main()

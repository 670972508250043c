"""How long the review workspace takes to answer, on the server, with a large queue.

    DATABASE_URL=postgres://... .venv/bin/python -m benchmarks.bench_review [--uploads 10000]

Fills a throwaway database (``<name>_bench`` beside DATABASE_URL's, made and dropped;
SQLite in a temporary folder without one) with --uploads quarantined uploads, each
matched to one of 200 bans, and times the pages a moderator opens, in this process
(Django's test client: server time, no network): the queue (handing out a batch), one
upload's page, the queue filtered by a ban, everything waiting page by page, the uploads
list and the dashboard. The same pages with 100 uploads are the baseline, in the same
run. Figures only.
"""

import argparse
import random
import statistics
import time
from datetime import timedelta

from benchmarks.database import throwaway_database

REPEATS = 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=10_000)
    args = parser.parse_args()
    with throwaway_database("review"):
        from django.conf import settings
        from django.db import connection

        settings.ALLOWED_HOSTS = ["testserver"]
        baseline = measure(100, "baseline")
        large = measure(args.uploads, "large")
        print(f"Server time per page, {REPEATS} requests each, on {connection.vendor}:")
        print(f"  {'page':<28} {'100 waiting':>16} {f'{args.uploads:,} waiting':>18}  ratio")
        for name in baseline:
            small, big = statistics.median(baseline[name]), statistics.median(large[name])
            p95 = sorted(large[name])[int(len(large[name]) * 0.95) - 1]
            print(
                f"  {name:<28} {small * 1000:13.1f} ms {big * 1000:12.1f} ms "
                f"(p95 {p95 * 1000:5.1f})  {big / small:4.1f}x"
            )


def measure(count: int, label: str) -> dict[str, list[float]]:
    from django.test import Client
    from django.utils import timezone

    from moderation.models import Bank, BannedFingerprint, Match, Upload
    from tests.moderation.support import MODERATOR_PERMISSIONS, make_user

    Match.objects.all().delete()
    Upload.objects.all().delete()
    bank, _ = Bank.objects.get_or_create(name="local")
    rng = random.Random(1)
    if not BannedFingerprint.objects.exists():
        BannedFingerprint.objects.bulk_create(
            BannedFingerprint(
                bank=bank, pdq=rng.randbytes(32).hex(), pdq_quality=100, source="hash"
            )
            for _ in range(200)
        )
    bans = list(BannedFingerprint.objects.values_list("pk", flat=True))
    start = timezone.now() - timedelta(days=3)
    uploads = Upload.objects.bulk_create(
        (
            Upload(
                path=f"users/{index % 997}/{index}.jpg",
                path_key=f"{index:064x}",
                size=50_000,
                sha256=f"{index:064x}",
                state=Upload.State.QUARANTINED,
                format="JPEG",
                width=800,
                height=600,
                quarantine_name=f"{index}/{index}.jpg",
                decided_at=start + timedelta(seconds=index),
            )
            for index in range(count)
        ),
        batch_size=2000,
    )
    Match.objects.bulk_create(
        (
            Match(
                upload=upload,
                fingerprint_id=rng.choice(bans),
                distances={"pdq": rng.randint(0, 31)},
                rule="pdq<=31",
                stage="hash",
                variant="as is",
                placement={"turn": "as_is", "box": None, "rotation": 0},
            )
            for upload in uploads
        ),
        batch_size=2000,
    )
    user = make_user(f"moderator-{label}", *MODERATOR_PERMISSIONS)
    client = Client()
    client.force_login(user)
    first = uploads[0].pk
    ban = bans[0]
    pages = {
        "review queue (your batch)": "/admin/moderation/upload/review/",
        "one upload": f"/admin/moderation/upload/review/{first}/",
        "queue filtered by a ban": f"/admin/moderation/upload/review/?ban={ban}",
        "everything waiting, page 3": "/admin/moderation/upload/review/?view=all&page=3",
        "uploads list": "/admin/moderation/upload/",
        "dashboard": "/admin/",
    }
    times: dict[str, list[float]] = {name: [] for name in pages}
    for _ in range(REPEATS):
        for name, page in pages.items():
            started = time.perf_counter()
            response = client.get(page)
            times[name].append(time.perf_counter() - started)
            assert response.status_code == 200, (page, response.status_code)
    return times


if __name__ == "__main__":
    main()

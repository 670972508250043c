"""How fast images are decided: per-image cost in a worker, and drop-to-decision end to end.

    .venv/bin/python -m benchmarks.bench_pipeline [--images DIR] [--hash-only N] [--redis URL]

Part 1 times what a worker does per image against a blocklist of --blocklist entries, both
stages (decode, fingerprints, turns, views, candidates from the index of local features,
ORB verification), beside the same with colour candidates as well (the default before
they were left out), the hash stage alone and the classic tutorial's cost (decode +
dHash only), and the same with the pictures' mirrored words left out (the upload mirrored
voting as well, as before they were filed), in the same run; with --hash-only N, both
stages again, both ways, once N hash-only bans (an imported list's) are added. Each image
is timed --rounds times, the approaches taken in turn image by image, and its fastest time
counts: the machine's speed drifts and stalls, and so the ratios hold. OpenCV and BLAS
keep to one process's share of the cores, as in a worker of --concurrency processes.
Part 2 starts a real watcher and worker (the embedded default, or PostgreSQL + Redis when
--redis and DATABASE_URL are given), drops images into the media directory one at a time
and then all at once, and reports how long each took to be decided. Figures only; nothing
is asserted.
"""

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hashes.detect import BannedPicture, Detector, HashRows
    from hashes.matching import Matcher, MatchRule

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "corpus")
    parser.add_argument("--blocklist", type=int, default=100_000)
    parser.add_argument(
        "--hash-only", type=int, default=0, help="then this many hash-only bans as well"
    )
    parser.add_argument("--redis", help="a Redis URL: run part 2 on Redis, not the file broker")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="part 1: each image's fastest of")
    parser.add_argument(
        "--files", type=int, default=0, help="then this many distinct files, renamed into place"
    )
    parser.add_argument("--rate", type=float, default=0, help="files/s for --files (0: at once)")
    parser.add_argument("--skip-cost", action="store_true", help="end to end only")
    args = parser.parse_args()
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in {".jpg", ".png"})
    if not images:
        parser.error(f"no .jpg or .png images in {args.images}")

    data_dir = Path(tempfile.mkdtemp(prefix="hashguard-bench-"))
    os.environ["HASHGUARD_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench")
    os.environ["HASHGUARD_LOG_LEVEL"] = "WARNING"
    if args.redis:
        os.environ["CELERY_BROKER_URL"] = args.redis
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    try:
        if not args.skip_cost:
            per_image(images, args.blocklist, args.hash_only, args.rounds, args.concurrency)
        end_to_end(images, data_dir, args)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def blocklist(
    blobs: list[bytes], size: int
) -> tuple["Matcher", "Detector", "Detector", "Detector"]:
    """A whole-picture matcher and three detectors of ``banned``'s pictures: one with the
    default settings, one of the pictures without their mirrored words (the upload
    mirrored votes as well, as before they were filed), one with colour candidates as
    well."""
    import dataclasses

    from hashes.detect import DetectConfig, Detector
    from hashes.matching import Matcher

    rule, pictures, load = banned(blobs, size)
    matcher = Matcher(rule)
    matcher.add_many([(key, picture.fingerprint) for key, picture in pictures.items()])
    by_colour = Detector(rule, DetectConfig(colour_candidates=4), load)
    by_colour.add_all(pictures)
    detector = Detector(rule, None, load)
    detector.add_all(pictures)
    unmirrored = Detector(rule, None, load)
    unmirrored.add_all(
        (key, dataclasses.replace(picture, mirrored_words=None))
        for key, picture in pictures.items()
    )
    return matcher, detector, unmirrored, by_colour


def banned(
    blobs: list[bytes], size: int
) -> tuple["MatchRule", dict[int, "BannedPicture"], Callable[[Iterable[int]], dict]]:
    """The default rule, ``size`` random banned pictures (fingerprints, colours, the words
    of random local features as they are and mirrored) and what loads the features to
    verify against: the real features of ``blobs``, as the second stage's cost depends
    on them."""
    import numpy as np

    from hashes.algorithms import Fingerprint
    from hashes.detect import BannedPicture, reference_features
    from hashes.feature_index import INDEXED, words
    from hashes.loading import load_image
    from hashes.matching import DEFAULT_RULE_CONFIG, MatchRule

    rng = random.Random(1)
    features = [reference_features(load_image(data, full_size=True).frames[0]) for data in blobs]
    colours = np.random.default_rng(1).random((size, 64)).astype(np.float32) ** 4
    colours /= np.linalg.norm(colours, axis=1, keepdims=True)
    descriptors = np.random.default_rng(2)
    pictures = {}
    for key in range(size):
        fingerprint = Fingerprint(
            hashes={
                "phash": f"{rng.getrandbits(64):016x}",
                "dhash": f"{rng.getrandbits(64):016x}",
                "pdq": f"{rng.getrandbits(256):064x}",
            },
            pdq_quality=100,
        )
        own, mirrored = (
            words(descriptors.integers(0, 256, (2 * INDEXED, 32), dtype=np.uint8)) for _ in range(2)
        )
        signature = colours[key].astype(np.float16)
        pictures[key] = BannedPicture(fingerprint, signature, words=own, mirrored_words=mirrored)

    def load(keys: Iterable[int]) -> dict:
        return {key: features[key % len(features)][0] for key in keys}

    return MatchRule.from_config(DEFAULT_RULE_CONFIG), pictures, load


def hash_only_rows(count: int, batch: int = 1_000_000) -> Iterable["HashRows"]:
    """``count`` random hash-only bans (PDQ, pHash and dHash each, as an imported hash
    list gives them), keyed from 10**9 up, a batch at a time."""
    import numpy as np

    from hashes.detect import HashRows

    rng = np.random.default_rng(11)
    for start in range(0, count, batch):
        size = min(batch, count - start)
        codes = rng.integers(0, 2**64, (size, 6), dtype=np.uint64)
        present = np.ones(size, dtype=bool)
        yield HashRows(
            keys=np.arange(10**9 + start, 10**9 + start + size, dtype=np.int64),
            hashes={
                name: (present, codes[:, columns])
                for name, columns in (
                    ("pdq", slice(0, 4)),
                    ("phash", slice(4, 5)),
                    ("dhash", slice(5, 6)),
                )
            },
            qualities=np.full(size, 100, dtype=np.int32),
        )


def per_image(
    images: list[Path], blocklist_size: int, hash_only: int, rounds: int, processes: int
) -> None:
    import io

    import imagehash
    from PIL import Image

    from hashes.algorithms import fingerprint_frames
    from hashes.detect import probes, use_threads
    from hashes.loading import load_image

    blobs = [path.read_bytes() for path in images]
    matcher, detector, unmirrored, by_colour = blocklist(blobs, blocklist_size)

    def classic(data: bytes) -> None:
        with Image.open(io.BytesIO(data)) as image:
            imagehash.dhash(image)

    def hash_stage_only(data: bytes) -> None:
        for frame in fingerprint_frames(load_image(data)):
            matcher.match(frame)

    def both_stages(data: bytes) -> None:
        detector.detect(probes(load_image(data)))

    def colour_candidates(data: bytes) -> None:
        by_colour.detect(probes(load_image(data)))

    def upload_mirrored(data: bytes) -> None:
        unmirrored.detect(probes(load_image(data)))

    restore = use_threads(processes)
    try:
        timings = fastest(
            blobs,
            rounds,
            {
                "classic dHash only": classic,
                "hashes only": hash_stage_only,
                "before: colours too": colour_candidates,
                "before: upload mirrored": upload_mirrored,
                "now: both stages": both_stages,
            },
        )
        if hash_only:
            detector.add_hash_rows(hash_only_rows(hash_only))
            unmirrored.add_hash_rows(hash_only_rows(hash_only))
            timings |= fastest(
                blobs,
                rounds,
                {
                    f"+{hash_only:,}, before": upload_mirrored,
                    f"+{hash_only:,} hash-only": both_stages,
                },
            )
    finally:
        restore()
    print(
        f"Per image, {len(blobs)} images from {images[0].parent}, blocklist of "
        f"{blocklist_size:,} fingerprints (each image's fastest of {rounds} rounds, "
        f"{processes} worker processes' share of the cores each):"
    )
    for name, seconds in timings.items():
        print(f"  {name:<24} {seconds * 1000:8.1f} ms/image  {1 / seconds:7.1f} images/s")
    now = timings["now: both stages"]
    print(
        f"  the worker now costs {now / timings['classic dHash only']:.1f}x the classic "
        f"dHash per image, {now / timings['hashes only']:.2f}x the hash stage alone (turns, "
        f"views, candidates, ORB verification), {now / timings['before: colours too']:.2f}x "
        f"the same with colour candidates as well, and "
        f"{now / timings['before: upload mirrored']:.2f}x the same with the pictures' "
        "mirrored words left out (the upload mirrored voting as well)"
    )
    if hash_only:
        with_all = timings[f"+{hash_only:,} hash-only"] / timings[f"+{hash_only:,}, before"]
        print(f"  with the hash-only bans as well, {with_all:.2f}x the upload mirrored voting")


def fastest(
    blobs: list[bytes],
    rounds: int,
    ways: dict[str, Callable[[bytes], None]],
    *,
    by_round: bool = False,
) -> dict[str, float]:
    """Each way's mean over the images of each image's fastest time in ``rounds`` rounds,
    the ways taken in turn image by image, or with ``by_round`` round by round (each way
    over all the images before the next)."""
    if by_round:
        turns = [(name, index) for name in ways for index in range(len(blobs))]
    else:
        turns = [(name, index) for index in range(len(blobs)) for name in ways]
    times = {name: [float("inf")] * len(blobs) for name in ways}
    for _ in range(rounds):
        for name, index in turns:
            start = time.perf_counter()
            ways[name](blobs[index])
            times[name][index] = min(times[name][index], time.perf_counter() - start)
    return {name: sum(each) / len(each) for name, each in times.items()}


def end_to_end(images: list[Path], data_dir: Path, args: argparse.Namespace) -> None:
    from django.core.management import call_command

    from moderation import services
    from moderation.models import Upload
    from tests.moderation.processes import Stack, database_url

    call_command("migrate", verbosity=0)
    for path in images[:4]:  # image-backed bans: the second stage runs as in production
        services.banned_add_image(data=path.read_bytes())
    stack = Stack(
        data_dir,
        database_url=database_url(),
        broker_url=args.redis or "filesystem://",
        HASHGUARD_STABLE_SECONDS="1.0",
        HASHGUARD_LOG_LEVEL="INFO",
        # Connections kept between tasks, as the production environment file sets.
        DATABASE_CONN_MAX_AGE=os.environ.get("DATABASE_CONN_MAX_AGE", "60"),
    )
    media = data_dir / "media"
    media.mkdir(exist_ok=True)
    undecided = [Upload.State.PENDING, Upload.State.PROCESSING]
    try:
        stack.worker(concurrency=args.concurrency)
        stack.watcher()
        latencies = []
        for index, path in enumerate(images[:10]):
            start = time.perf_counter()
            shutil.copy(path, media / f"one-{index}{path.suffix}")
            while (
                not Upload.objects.filter(path=f"one-{index}{path.suffix}")
                .exclude(state__in=undecided)
                .exists()
            ):
                time.sleep(0.01)
            latencies.append(time.perf_counter() - start)
        start = time.perf_counter()
        for index, path in enumerate(images):
            shutil.copy(path, media / f"burst-{index}{path.suffix}")
        while Upload.objects.filter(path__startswith="burst-").exclude(
            state__in=undecided
        ).count() < len(images):
            time.sleep(0.05)
        burst = time.perf_counter() - start
        sustained = _sustained(images, data_dir, args.files, args.rate) if args.files else ""
    finally:
        stack.stop()
    broker = "Redis" if args.redis else "the file broker"
    print(
        f"\nEnd to end ({broker}, {args.concurrency} worker processes, "
        "HASHGUARD_STABLE_SECONDS=1.0, "
        f"DATABASE_CONN_MAX_AGE={stack.env['DATABASE_CONN_MAX_AGE']}):"
    )
    print(
        f"  one file at a time: median {statistics.median(latencies):.2f} s from write to "
        f"decision (min {min(latencies):.2f}, max {max(latencies):.2f}); copied files are "
        "recorded when closed, without the 1.0 s stability wait"
    )
    print(
        f"  {len(images)} files at once: all decided in {burst:.2f} s, "
        f"{len(images) / burst:.1f} files/s"
    )
    if sustained:
        print(sustained)


def _sustained(images: list[Path], data_dir: Path, count: int, rate: float) -> str:
    """Drop ``count`` distinct files (the images cropped and recompressed a little, made
    beforehand), each written beside the media tree and renamed into it as an upload
    server does, at ``rate`` a second (0: all at once); then the time from each rename
    to its decision, from the decisions' own timestamps."""
    import io

    from PIL import Image

    from moderation.models import Upload

    rng = random.Random(3)
    staging = data_dir / "staging"
    staging.mkdir()
    names = []
    for index in range(count):
        with Image.open(images[index % len(images)]) as image:
            picture = image.convert("RGB")
        cut = rng.randrange(1, 8)
        picture = picture.crop((cut, cut, picture.width - cut, picture.height - cut))
        data = io.BytesIO()
        picture.save(data, "JPEG", quality=rng.randrange(80, 95))
        names.append(f"sustained-{index}.jpg")
        (staging / names[-1]).write_bytes(data.getvalue())
    dropped: dict[str, float] = {}
    started = time.time()
    for index, name in enumerate(names):
        if rate:
            time.sleep(max(0.0, started + index / rate - time.time()))
        os.rename(staging / name, data_dir / "media" / name)
        dropped[name] = time.time()
    rows = Upload.objects.filter(path__startswith="sustained-", decided_at__isnull=False)
    deadline = time.time() + 600 + 2 * count
    # Counted while waiting, read once at the end: reading every decision each poll
    # would spend the cores the pipeline is measured on.
    while rows.count() < count and time.time() < deadline:
        time.sleep(0.5)
    decided = {path: at.timestamp() for path, at in rows.values_list("path", "decided_at")}
    waits = sorted(decided[name] - dropped[name] for name in decided)
    if not waits:
        return f"  {count} files renamed in: none decided"
    span = max(decided.values()) - started
    pace = f"{rate:g} files/s" if rate else "all at once"
    return (
        f"  {count} distinct files renamed in, {pace}: {len(waits)} decided "
        f"({count - len(waits)} not within the wait), {len(waits) / span:.1f} files/s; from "
        f"rename to decision median {statistics.median(waits):.2f} s, p99 "
        f"{waits[min(len(waits) - 1, round(len(waits) * 0.99))]:.2f} s, max {waits[-1]:.2f} s"
    )


if __name__ == "__main__":
    main()

"""What checking uploads on reduced copies saves per image, and how far it moves hashes.

    .venv/bin/python -m benchmarks.bench_decode [--images DIR] [--blocklist N] [--rounds N]

Each image of --images is checked two ways in the same run, in turn:

- full size, as workers did before: every pixel decoded, the fingerprint hashed on the
  whole frame, and the copies for turns, views and local features each scaled from it;
- reduced, as they do now: a JPEG at least twice ``DRAFT_SIDE`` across decoded reduced
  by the decoder's DCT scaling (``load_image``), the fingerprint and PDQ's turns hashed on
  one copy ``MATCH_SIDE`` across (``probes``).

It prints the cost per image of decoding, of the hash stage (decode, fingerprint, search
of a blocklist of --blocklist random fingerprints) and of both stages, as ratios; then
how far the reduced path moves each upload's hashes from the full-resolution hashes its
ban has (bans are hashed at full size): for the images as they are, and saved 2.5 times
larger as JPEGs, which are decoded reduced. Figures only; nothing is asserted.
"""

import argparse
import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.bench_pipeline import ROOT, blocklist
from hashes.algorithms import (
    MATCH_SIDE,
    Fingerprint,
    distinct_frames,
    fingerprint_image,
    fingerprint_turns,
)
from hashes.detect import (
    HASH_SIDE,
    QUERY_FEATURE_SIDE,
    TURNS,
    Detector,
    Probe,
    probe,
    probes,
    query_copy,
)
from hashes.loading import DRAFT_SIDE, LoadedImage, load_image
from hashes.matching import Matcher
from hashes.views import cut, views, working_copy

LARGER = f"saved 2.5x larger as JPEGs, decoded reduced over {2 * DRAFT_SIDE} px"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "corpus")
    parser.add_argument("--blocklist", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="times each image is timed")
    args = parser.parse_args()
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in {".jpg", ".png"})
    if not paths:
        parser.error(f"no .jpg or .png images in {args.images}")
    blobs = [path.read_bytes() for path in paths]
    larger = [_enlarged(data) for data in blobs]
    print(f"{len(blobs)} images from {args.images}, blocklist of {args.blocklist:,}")
    matcher, detector, _ = blocklist(blobs, args.blocklist)
    costs("the images as they are", blobs, matcher, detector, args.rounds)
    costs(LARGER, larger, matcher, detector, 1)
    print("\nHow far an upload's hashes lie from its ban's (full resolution), in bits:")
    distances("the images as they are", blobs)
    distances(LARGER, larger)
    turned("the images turned 90 degrees", blobs)


def probes_full_size(loaded: LoadedImage) -> list[Probe]:
    """``probes`` as workers computed them before uploads were checked reduced: kept here
    as the baseline."""
    found = []
    for index, (frame, fingerprint) in enumerate(distinct_frames(loaded)):
        work = working_copy(frame)
        small = working_copy(work, HASH_SIDE)
        turns = [
            (name, turned)
            for (name, _, undo), turned in zip(TURNS, fingerprint_turns(small), strict=True)
            if undo is not None
        ]
        regions = [
            (view, fingerprint_image(working_copy(cut(work, view), HASH_SIDE)))
            for view in (views(work) if index == 0 else [])
        ]
        image = working_copy(frame, QUERY_FEATURE_SIDE)
        found.append(Probe(fingerprint, turns, regions, image, image.convert("L"), work))
    return found


def upload_fingerprint(frame: Image.Image) -> Fingerprint:
    """The fingerprint ``probe`` gives a frame, without the rest of the probe."""
    return fingerprint_image(working_copy(query_copy(frame), MATCH_SIDE), exported=False)


def costs(
    title: str, blobs: list[bytes], matcher: Matcher, detector: Detector, rounds: int
) -> None:
    def hash_stage(full_size: bool) -> Callable[[bytes], object]:
        def work(data: bytes) -> object:
            loaded = load_image(data, full_size=full_size)
            if full_size:
                return [matcher.match(f) for _, f in distinct_frames(loaded)]
            return [matcher.match(upload_fingerprint(frame)) for frame in loaded.frames]

        return work

    ways: dict[str, dict[str, Callable[[bytes], object]]] = {
        "decode": {
            "full": lambda data: load_image(data, full_size=True),
            "reduced": lambda data: load_image(data),
        },
        "hash stage": {"full": hash_stage(True), "reduced": hash_stage(False)},
        "both stages": {
            "full": lambda data: detector.detect(
                probes_full_size(load_image(data, full_size=True))
            ),
            "reduced": lambda data: detector.detect(probes(load_image(data))),
        },
    }
    seconds = {(step, way): 0.0 for step, by_way in ways.items() for way in by_way}
    # Image by image, each way in turn (first one, then the other), so that both see the
    # same load on the machine and neither always finds the other's data in the caches.
    for round_ in range(rounds):
        for index, data in enumerate(blobs):
            for step, by_way in ways.items():
                for way, work in sorted(by_way.items(), reverse=(round_ + index) % 2 == 1):
                    start = time.perf_counter()
                    work(data)
                    seconds[(step, way)] += time.perf_counter() - start
    count = rounds * len(blobs)
    print(f"\nPer image, {title}, mean of {rounds} round(s): full size -> reduced")
    for step in ways:
        full, reduced = seconds[(step, "full")] / count, seconds[(step, "reduced")] / count
        print(
            f"  {step:<12} {full * 1000:7.1f} ms -> {reduced * 1000:7.1f} ms   "
            f"{reduced / full:5.2f}x the cost ({full / reduced:4.1f} times as fast)"
        )


def distances(title: str, blobs: list[bytes]) -> None:
    moved: dict[str, list[int]] = {}
    reduced: dict[str, list[int]] = {}
    for data in blobs:
        ban = distinct_frames(load_image(data, full_size=True))[0][1]
        upload = load_image(data)
        found = ban.distance(probes(upload)[0].fingerprint)
        for name, bits in found.items():
            moved.setdefault(name, []).append(bits)
            if max(upload.frames[0].size) > MATCH_SIDE:
                reduced.setdefault(name, []).append(bits)
    print(f"  {title}:")
    for label, table in (("every image", moved), ("those hashed reduced", reduced)):
        if table:
            count = len(next(iter(table.values())))
            summary = ", ".join(f"{name} {_summary(bits)}" for name, bits in table.items())
            print(f"    {label + f' ({count})':<26} {summary}")


def turned(title: str, blobs: list[bytes]) -> None:
    """The nearest of an upload's turns to its ban, when the upload is the banned picture
    turned: PDQ's turns now come from the MATCH_SIDE copy, before from HASH_SIDE."""
    before, now = [], []
    for data in blobs:
        ban = distinct_frames(load_image(data, full_size=True))[0][1]
        upload = load_image(data).frames[0].transpose(Image.Transpose.ROTATE_90)
        full = load_image(data, full_size=True).frames[0].transpose(Image.Transpose.ROTATE_90)
        previous = probes_full_size(_loaded(full))[0]
        before.append(min(ban.distance(f)["pdq"] for _, f in previous.turns))
        now.append(min(ban.distance(f)["pdq"] for _, f in probe(upload).turns))
    print(f"  {title}, PDQ of the nearest turn: before {_summary(before)}, now {_summary(now)}")


def _summary(bits: list[int]) -> str:
    return f"median {statistics.median(bits):g} p90 {np.percentile(bits, 90):g} max {max(bits)}"


def _enlarged(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        frame = image.convert("RGB")
    size = (round(frame.width * 2.5), round(frame.height * 2.5))
    buffer = io.BytesIO()
    frame.resize(size, Image.Resampling.LANCZOS).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def _loaded(frame: Image.Image) -> LoadedImage:
    return LoadedImage("PNG", frame.width, frame.height, [frame], frame_count=1)


if __name__ == "__main__":
    main()

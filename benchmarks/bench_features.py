"""The second stage's candidates at scale: the index of local features, beside the colour
signatures that were the only guess before it, with N image-backed bans.

    .venv/bin/python -m benchmarks.bench_features [--images DIR] [--n 100000]

The images of DIR are banned with their real features, and N more bans with random
descriptors (as many as a real picture files) and colours mixed from two of DIR's
pictures: other pictures, whose colours are as near as real ones. Each image of DIR is
then pasted at half size into a corner of the next one, as the evaluation's paste edit
does, and mirrored and cropped. Prints, for the index and for the colour table of the
same N bans: how often the banned picture is among the candidates, what a search costs
per upload, and the index's memory and build time. Figures only; nothing is asserted.
"""

import argparse
import random
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from benchmarks.bench_index import rss_mb
from hashes.detect import probe, reference_features
from hashes.evaluation.edits import EDITS
from hashes.feature_index import FeatureIndex, indexed_words, words
from hashes.loading import load_image

ROOT = Path(__file__).resolve().parents[1]
PER_REGION = 2
COLOUR_CANDIDATES = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "corpus")
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    frames = []
    for path in sorted(args.images.iterdir()):
        if path.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"}:
            frames.append(load_image(path.read_bytes(), full_size=True).frames[0].convert("RGB"))
    banned = [reference_features(frame) for frame in frames]
    rng = np.random.default_rng(1)
    real = np.stack([signature for _, signature in banned]).astype(np.float32)
    pairs = rng.integers(0, len(real), (args.n, 2))
    share = rng.random((args.n, 1), dtype=np.float32)
    mixed = share * real[pairs[:, 0]] + (1 - share) * real[pairs[:, 1]]
    colours = np.concatenate([real, mixed / np.linalg.norm(mixed, axis=1, keepdims=True)])
    per_picture = int(np.median([indexed_words(features).shape[1] for features, _ in banned]))

    def filed() -> Iterator[tuple[int, np.ndarray]]:
        for key, (features, _) in enumerate(banned):
            yield key, indexed_words(features)
        for key in range(len(banned), len(banned) + args.n):
            yield key, words(rng.integers(0, 256, (per_picture, 32), dtype=np.uint8))

    before = rss_mb()
    start = time.perf_counter()
    index = FeatureIndex()
    batch: list[tuple[int, np.ndarray]] = []
    for item in filed():  # a batch at a time, as a worker's build files them
        batch.append(item)
        if len(batch) == 10_000:
            index.add_many(batch)
            batch.clear()
    index.add_many(batch)
    built = time.perf_counter() - start
    memory = rss_mb() - before
    print(
        f"{len(index):,} image-backed bans ({len(frames)} real), {per_picture} descriptors "
        f"each: index built in {built:.1f} s, {memory:.0f} MB resident, its arrays "
        f"{index.nbytes / 2**20:.0f} MB; the colour table {colours.nbytes / 2**20:.0f} MB"
    )

    for edit in ("paste_corner", "mirror_crop", "crop_20"):
        found = {"index": 0, "colour": 0}
        cost: dict[str, list[float]] = {"index": [], "colour": []}
        for key, frame in enumerate(frames):
            other = frames[(key + 1) % len(frames)]
            data = EDITS[edit].apply(frame, random.Random(key), [other])
            item = probe(load_image(data).frames[0].convert("RGB"))
            uploads = (item.features(), item.features(mirrored=True))
            start = time.perf_counter()
            nominated = {found_key for found_key, _, _ in index.nominate(uploads, PER_REGION)}
            cost["index"].append(time.perf_counter() - start)
            found["index"] += key in nominated
            start = time.perf_counter()
            signatures = np.vstack([item.colours, item.hue_turned[:1]]).astype(np.float32)
            scores = colours @ signatures.T
            guessed = set()
            for column in scores.T:
                guessed.update(np.argpartition(-column, COLOUR_CANDIDATES)[:COLOUR_CANDIDATES])
            cost["colour"].append(time.perf_counter() - start)
            found["colour"] += key in guessed
        print(f"  {edit}: banned picture among the candidates")
        for name, label in (("index", "feature index"), ("colour", "nearest colours")):
            print(
                f"    {label:<16} {found[name]:3d} of {len(frames)}, "
                f"{statistics.median(cost[name]) * 1000:6.1f} ms per upload (median)"
            )


if __name__ == "__main__":
    main()

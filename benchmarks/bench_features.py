"""The second stage's candidates at scale: the index of local features, beside the colour
signatures that were the only guess before it, with N image-backed bans.

    .venv/bin/python -m benchmarks.bench_features [--images DIR] [--n 100000]

The images of DIR are banned with their real features, and N more bans with random
descriptors (as many as a real picture files) and colours mixed from two of DIR's
pictures: other pictures, whose colours are as near as real ones. Each image of DIR is
then pasted at half size into a corner of the next one, as the evaluation's paste edit
does, and mirrored and cropped. Prints, for the index with each picture's mirrored words
filed, for it without them (the upload mirrored votes as well, as before they were) and
for the colour table of the same N bans: how often the banned picture is among the
candidates, what a search costs per upload (with the upload mirrored, its mirrored
features too), and each index's memory and build time. Figures only; nothing is
asserted.
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
from hashes.feature_index import FeatureIndex, filed_words, indexed_words, words
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

    def filed(mirrored: bool) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        for key, (features, _) in enumerate(banned):
            own, turned = filed_words(features)
            yield key, own, turned if mirrored else None
        # The same random words as they are either way, from a generator of their own.
        own_words, turned_words = np.random.default_rng(2), np.random.default_rng(3)
        shape = (per_picture, 32)
        for key in range(len(banned), len(banned) + args.n):
            own = words(own_words.integers(0, 256, shape, dtype=np.uint8))
            turned = words(turned_words.integers(0, 256, shape, dtype=np.uint8))
            yield key, own, turned if mirrored else None

    indexes = {}
    for mirrored in (True, False):
        before = rss_mb()
        start = time.perf_counter()
        index = FeatureIndex()
        batch: list[tuple[int, np.ndarray, np.ndarray | None]] = []
        for item in filed(mirrored):  # a batch at a time, as a worker's build files them
            batch.append(item)
            if len(batch) == 10_000:
                index.add_many(batch)
                batch.clear()
        index.add_many(batch)
        built = time.perf_counter() - start
        memory = rss_mb() - before
        print(
            f"{len(index):,} image-backed bans ({len(frames)} real), {per_picture} descriptors "
            f"each, {'and as many mirrored' if mirrored else 'not mirrored (before)'}: index "
            f"built in {built:.1f} s, {memory:.0f} MB resident, its arrays "
            f"{index.nbytes / 2**20:.0f} MB"
        )
        indexes[mirrored] = index
    print(f"The colour table: {colours.nbytes / 2**20:.0f} MB")

    ways = {
        "mirrored": "feature index, mirrored words filed",
        "upload": "feature index, the upload mirrored (before)",
        "colour": "nearest colours",
    }
    for edit in ("paste_corner", "mirror_crop", "crop_20"):
        found = dict.fromkeys(ways, 0)
        cost: dict[str, list[float]] = {name: [] for name in ways}
        for key, frame in enumerate(frames):
            other = frames[(key + 1) % len(frames)]
            data = EDITS[edit].apply(frame, random.Random(key), [other])
            item = probe(load_image(data).frames[0].convert("RGB"))
            upload = item.features()
            start = time.perf_counter()
            nominated = indexes[True].nominate([upload], PER_REGION)
            cost["mirrored"].append(time.perf_counter() - start)
            found["mirrored"] += key in {found_key for found_key, _, _ in nominated}
            start = time.perf_counter()
            uploads = [upload, item.features(mirrored=True)]  # made here: its cost counts
            nominated = indexes[False].nominate(uploads, PER_REGION)
            cost["upload"].append(time.perf_counter() - start)
            found["upload"] += key in {found_key for found_key, _, _ in nominated}
            start = time.perf_counter()
            signatures = np.vstack([item.colours, item.hue_turned[:1]]).astype(np.float32)
            scores = colours @ signatures.T
            guessed = set()
            for column in scores.T:
                guessed.update(np.argpartition(-column, COLOUR_CANDIDATES)[:COLOUR_CANDIDATES])
            cost["colour"].append(time.perf_counter() - start)
            found["colour"] += key in guessed
        print(f"  {edit}: banned picture among the candidates")
        for name, label in ways.items():
            print(
                f"    {label:<44} {found[name]:3d} of {len(frames)}, "
                f"{statistics.median(cost[name]) * 1000:6.1f} ms per upload (median)"
            )


if __name__ == "__main__":
    main()

"""Pairing keypoints for the second stage's verification: descriptors compared through
their 16-bit chunks (``hashes.local.matched_pairs``), beside comparing every pair (OpenCV's
brute-force matcher with the same ratio test, the approach before), in the same run.

    .venv/bin/python -m benchmarks.bench_matching [--images DIR]

Each image of DIR is banned, edited by each of a few of the evaluation's edits (pasted
into the next image, cropped, turned...) and verified against its edited copy; every
image is also verified against every other image unedited, which must not convince.
Prints, per pairing: how many copies are verified, how many pairs of different images
are fitted (and so reach the pixel check) and verified, and what a verification of each
costs. Figures only; nothing is asserted.
"""

import argparse
import random
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from hashes.detect import probe, reference_features
from hashes.evaluation.edits import EDITS
from hashes.loading import load_image
from hashes.local import LocalFeatures, Pairing, fit_points, matched_pairs, verify

ROOT = Path(__file__).resolve().parents[1]
EDITED = (
    "crop_20",
    "rotate_5",
    "keystone",
    "mirror_crop",
    "paste_corner",
    "paste_centre",
    "collage_2x2",
    "screenshot",
    "jpeg_q15",
    "noise",
)
RATIO = 0.8


def every_pair(banned: LocalFeatures, upload: LocalFeatures) -> tuple[np.ndarray, np.ndarray]:
    """Each banned descriptor's nearest upload descriptor, compared with all of them,
    where it is clearly nearer than the next."""
    found = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(banned.descriptors, upload.descriptors, k=2)
    good = [
        pair[0] for pair in found if len(pair) == 2 and pair[0].distance < RATIO * pair[1].distance
    ]
    return (
        np.array([match.queryIdx for match in good], np.int64),
        np.array([match.trainIdx for match in good], np.int64),
    )


PAIRINGS: dict[str, Pairing] = {"every pair (before)": every_pair, "16-bit chunks": matched_pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "corpus")
    args = parser.parse_args()
    # Single-threaded, as in a worker process sharing its machine with the others.
    cv2.setNumThreads(1)
    frames = []
    for path in sorted(args.images.iterdir()):
        if path.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"}:
            frames.append(load_image(path.read_bytes(), full_size=True).frames[0].convert("RGB"))
    banned = [reference_features(frame)[0] for frame in frames]
    copies: list[tuple[int, LocalFeatures]] = []
    for key, frame in enumerate(frames):
        other = frames[(key + 1) % len(frames)]
        for edit in EDITED:
            data = EDITS[edit].apply(frame, random.Random(key), [other])
            item = probe(load_image(data).frames[0].convert("RGB"))
            copies.append((key, item.features(mirrored=edit.startswith("mirror"))))
    unedited = [probe(frame).features() for frame in frames]
    print(
        f"{len(frames)} banned images; {len(copies)} edited copies ({', '.join(EDITED)}); "
        f"{len(frames) * (len(frames) - 1)} pairs of different images"
    )
    for name, pairs in PAIRINGS.items():
        seconds: dict[str, list[float]] = {"copy": [], "different": []}
        verified = 0
        for key, upload in copies:
            start = time.perf_counter()
            verified += verify(banned[key], upload, pairs=pairs) is not None
            seconds["copy"].append(time.perf_counter() - start)
        fitted = passed = 0
        for key, reference in enumerate(banned):
            for other, upload in enumerate(unedited):
                if other == key:
                    continue
                fitted += fit_points(reference, upload, pairs) is not None
                start = time.perf_counter()
                passed += verify(reference, upload, pairs=pairs) is not None
                seconds["different"].append(time.perf_counter() - start)
        print(
            f"  {name:<20} copies verified {verified} of {len(copies)}, "
            f"{statistics.mean(seconds['copy']) * 1000:.1f} ms each; different images "
            f"fitted {fitted}, verified {passed}, "
            f"{statistics.mean(seconds['different']) * 1000:.1f} ms each (means)"
        )


if __name__ == "__main__":
    main()

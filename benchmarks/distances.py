"""Hash distances between edited copies of an image and between distinct images.

For every image in a folder, makes the edits a re-upload typically goes through (resize,
recompression, format change, brightness), and prints per algorithm how far each edit
moves the hash, how close distinct images come, and where the default match rule errs.

    .venv/bin/python -m benchmarks.distances /work/shared/corpus
"""

import argparse
import hashlib
import io
import itertools
import statistics
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageEnhance

from hashes.algorithms import ALGORITHMS, Fingerprint, fingerprint_image
from hashes.loading import load_image
from hashes.matching import DEFAULT_RULE_CONFIG, Matcher, MatchRule


def _encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _resize(factor: float) -> Callable[[Image.Image], bytes]:
    def edit(image: Image.Image) -> bytes:
        size = (round(image.width * factor), round(image.height * factor))
        return _encode(image.resize(size, Image.Resampling.LANCZOS), "JPEG", quality=90)

    return edit


EDITS: dict[str, Callable[[Image.Image], bytes]] = {
    "resize 0.5x": _resize(0.5),
    "resize 2x": _resize(2),
    "jpeg q30": lambda image: _encode(image, "JPEG", quality=30),
    "png": lambda image: _encode(image, "PNG"),
    "webp q75": lambda image: _encode(image, "WEBP", quality=75),
    "brightness +10%": lambda image: _encode(
        ImageEnhance.Brightness(image).enhance(1.1), "JPEG", quality=90
    ),
    "brightness -10%": lambda image: _encode(
        ImageEnhance.Brightness(image).enhance(0.9), "JPEG", quality=90
    ),
}


def _fingerprint(data: bytes) -> Fingerprint:
    return fingerprint_image(load_image(data).frames[0])


def _summary(values: list[int]) -> str:
    return f"{min(values):>4} {statistics.median(values):>6.1f} {max(values):>4}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()

    paths = sorted(
        path for path in args.folder.iterdir() if path.suffix.lower() in {".jpg", ".jpeg", ".png"}
    )
    originals: dict[str, Fingerprint] = {}
    digests: dict[str, str] = {}
    edited: dict[str, dict[str, Fingerprint]] = {edit: {} for edit in EDITS}
    for path in paths:
        data = path.read_bytes()
        digests[path.stem] = hashlib.sha256(data).hexdigest()
        originals[path.stem] = _fingerprint(data)
        image = load_image(data).frames[0]
        for edit, make in EDITS.items():
            edited[edit][path.stem] = _fingerprint(make(image))

    names = list(ALGORITHMS)
    print(f"{len(paths)} images. Distances as min / median / max.\n")
    print(f"{'edit of the same image':<28}" + "".join(f"{name:>20}" for name in names))
    for edit, fingerprints in edited.items():
        row = [
            [
                originals[stem].distance(fingerprint)[name]
                for stem, fingerprint in fingerprints.items()
            ]
            for name in names
        ]
        print(f"{edit:<28}" + "".join(f"{_summary(values):>20}" for values in row))

    duplicates = {
        (a, b) for a, b in itertools.combinations(originals, 2) if digests[a] == digests[b]
    }
    pairs = [pair for pair in itertools.combinations(originals, 2) if pair not in duplicates]
    print(f"\n{'distinct images':<28}" + "".join(f"{name:>20}" for name in names))
    row = [[originals[a].distance(originals[b])[name] for a, b in pairs] for name in names]
    print(f"{f'{len(pairs)} pairs':<28}" + "".join(f"{_summary(values):>20}" for values in row))
    if duplicates:
        print(f"(left out byte-identical files: {sorted(duplicates)})")

    print("\nClosest distinct pairs per algorithm:")
    for name in names:
        closest = sorted(
            pairs, key=lambda pair: originals[pair[0]].distance(originals[pair[1]])[name]
        )
        for a, b in closest[:3]:
            distances = originals[a].distance(originals[b])
            print(f"  {name:<6} {a} ~ {b}: {distances}")

    print("\nPDQ quality of the originals:")
    for stem, fingerprint in sorted(originals.items(), key=lambda item: item[1].pdq_quality):
        print(f"  {fingerprint.pdq_quality:>3}  {stem}")

    matcher = Matcher(MatchRule.from_config(DEFAULT_RULE_CONFIG))
    keys = dict(enumerate(originals))
    for key, stem in keys.items():
        matcher.add(key, originals[stem])
    print(f"\nDefault rule {DEFAULT_RULE_CONFIG}:")
    misses = [
        (edit, stem)
        for edit, fingerprints in edited.items()
        for stem, fingerprint in fingerprints.items()
        if stem not in {keys[match.key] for match in matcher.match(fingerprint)}
    ]
    false_matches = [
        (stem, keys[match.key], match.rule, match.distances)
        for stem, fingerprint in originals.items()
        for match in matcher.match(fingerprint)
        if keys[match.key] != stem and digests[keys[match.key]] != digests[stem]
    ]
    print(f"  missed edits: {len(misses)} of {len(paths) * len(EDITS)}")
    for edit, stem in misses:
        print(f"    {edit}: {stem} {originals[stem].distance(edited[edit][stem])}")
    print(f"  matches between distinct images: {len(false_matches)}")
    for match in false_matches:
        print(f"    {match}")


if __name__ == "__main__":
    main()

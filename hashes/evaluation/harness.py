"""Measure how well hashguard catches edited copies of banned images, beside baselines.

``evaluate`` bans every image in one folder, makes each edit of ``CATALOGUE`` from each of
them and asks the product's own detector (the code path the workers use) whether the edited
file is banned. Innocent images from another folder, as they are and with edits of their
own, must match nothing. In the same run three baselines answer the same files:

- ``dhash_exact``: dHash equality, the classic tutorial's dictionary lookup;
- ``phash_10``: ImageHash pHash within 10 bits;
- ``pdq_31``: PDQ within 31 bits, Meta's recommended threshold.

The baselines read the file as those tools do: the first frame, no EXIF orientation.
``write_report`` turns the result into Markdown and PNG plots.
"""

import hashlib
import io
import multiprocessing
import random
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from hashes.algorithms import ALGORITHMS, Fingerprint, fingerprint_frames, fingerprint_image
from hashes.detect import (
    BannedPicture,
    DetectConfig,
    Detector,
    probes,
    reference_features,
    use_threads,
)
from hashes.errors import ImageError
from hashes.evaluation.edits import CATALOGUE, Edit
from hashes.feature_index import filed_words
from hashes.loading import load_image
from hashes.local import LocalFeatures
from hashes.matching import DEFAULT_RULE_CONFIG, MatchRule, is_low_detail

BASELINES = ("dhash_exact", "phash_10", "pdq_31")
SYSTEMS = ("hashguard", *BASELINES)
_OTHERS = 24  # innocent images kept in memory to fill collages and animations


@dataclass
class Sample:
    """One edited file's outcome."""

    source: str
    edit: str
    banned: bool  # made from a banned image
    hits: dict[str, bool]  # per system: matched its own source (banned) or anything (innocent)
    wrong: dict[str, int]  # per system: how many other banned images it matched
    seconds: dict[str, float]
    distances: dict[str, int]  # canonical distances to its source, banned samples only
    explanation: str = ""
    fingerprint: Fingerprint | None = None  # of the file's first frame
    refused: bool = False  # its banned source is too plain for fuzzy matching


@dataclass
class Evaluation:
    banned: list[str]
    innocent: list[str]
    skipped: list[tuple[str, str]]
    samples: list[Sample] = field(default_factory=list)
    # Every innocent original against every banned image, per algorithm.
    innocent_distances: dict[str, list[int]] = field(default_factory=dict)
    edits: tuple[Edit, ...] = CATALOGUE
    refused: list[str] = field(default_factory=list)
    # Innocent images banned as well to make the blocklist bigger; neither scored nor innocent.
    distractors: list[str] = field(default_factory=list)

    @property
    def scored(self) -> list[Sample]:
        """Edits of banned images that fuzzy matching is for (low-detail bans left out)."""
        return [sample for sample in self.samples if sample.banned and not sample.refused]

    @property
    def innocent_samples(self) -> list[Sample]:
        return [sample for sample in self.samples if not sample.banned]

    def comparisons(self) -> int:
        """Innocent files times banned images (distractors too): pairs that could match wrongly."""
        return len(self.innocent_samples) * (len(self.banned) + len(self.distractors))


def image_files(folder: Path) -> list[Path]:
    """Regular files under ``folder``, in a stable order; non-images fail later, recorded."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of images.")
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file() and not path.is_symlink() and not path.name.startswith(".")
    )


class _Baselines:
    """The three baseline matchers over the banned images, hashed as those tools do."""

    def __init__(self) -> None:
        self.dhash: list[int] = []
        self.phash: list[int] = []
        self.pdq: list[np.ndarray] = []

    @staticmethod
    def hashes(data: bytes) -> tuple[int, int, np.ndarray]:
        with Image.open(io.BytesIO(data)) as image, warnings.catch_warnings():
            # As those tools read it: transparency dropped, which Pillow warns about.
            warnings.simplefilter("ignore", UserWarning)
            hashes = fingerprint_image(image.convert("RGB")).hashes
        return (
            int(hashes["dhash"], 16),
            int(hashes["phash"], 16),
            np.unpackbits(np.frombuffer(bytes.fromhex(hashes["pdq"]), dtype=np.uint8)).astype(bool),
        )

    def add(self, data: bytes) -> None:
        dhash, phash, pdq = self.hashes(data)
        self.dhash.append(dhash)
        self.phash.append(phash)
        self.pdq.append(pdq)

    def match(self, data: bytes) -> tuple[dict[str, set[int]], dict[str, float]]:
        found: dict[str, set[int]] = {}
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        dhash, phash, pdq = self.hashes(data)
        hashing = time.perf_counter() - start
        start = time.perf_counter()
        found["dhash_exact"] = {i for i, code in enumerate(self.dhash) if code == dhash}
        seconds["dhash_exact"] = hashing + time.perf_counter() - start
        start = time.perf_counter()
        found["phash_10"] = {
            i for i, code in enumerate(self.phash) if (code ^ phash).bit_count() <= 10
        }
        seconds["phash_10"] = hashing + time.perf_counter() - start
        start = time.perf_counter()
        distances = (np.stack(self.pdq) != pdq).sum(axis=1) if self.pdq else np.array([])
        found["pdq_31"] = {int(i) for i in np.flatnonzero(distances <= 31)}
        seconds["pdq_31"] = hashing + time.perf_counter() - start
        return found, seconds


class Harness:
    """The product detector and the baselines, loaded with one folder's banned images."""

    def __init__(
        self,
        rule: MatchRule | None = None,
        config: DetectConfig | None = None,
    ) -> None:
        self.rule = rule or MatchRule.from_config(DEFAULT_RULE_CONFIG)
        self.config = config or DetectConfig()
        self.features: dict[int, LocalFeatures] = {}
        self.fingerprints: dict[int, Fingerprint] = {}
        self.pictures: dict[int, BannedPicture] = {}
        self.baselines = _Baselines()
        self.detector = Detector(self.rule, self.config, self._load)

    def _load(self, keys: Iterable[int]) -> dict[int, LocalFeatures]:
        return {key: self.features[key] for key in keys if key in self.features}

    def ban(self, key: int, data: bytes) -> bool:
        """Ban an image as the product does; True if it is refused for fuzzy matching."""
        loaded = load_image(data, full_size=True)
        fingerprint = fingerprint_frames(loaded)[0]
        features, colours = reference_features(loaded.frames[0])
        self.fingerprints[key] = fingerprint
        self.features[key] = features
        own, mirrored = filed_words(features)
        self.pictures[key] = BannedPicture(
            fingerprint,
            colours,
            hashlib.sha256(data).hexdigest(),
            words=own,
            mirrored_words=mirrored,
        )
        self.baselines.add(data)
        return is_low_detail(fingerprint, self.rule.pdq_min_quality)

    def ready(self) -> None:
        self.detector.add_all(self.pictures)

    def check(self, data: bytes) -> tuple[dict[str, set[int]], dict[str, float], str, dict]:
        """Which banned keys each system finds in ``data``, and its time."""
        start = time.perf_counter()
        sha256 = hashlib.sha256(data).hexdigest()
        try:
            loaded = load_image(data)
        except ImageError:
            product: set[int] = set(self.detector.detect([], sha256))
            explanation, fingerprint = "unreadable", None
        else:
            checked = probes(loaded)
            found = self.detector.detect(checked, sha256)
            product = set(found)
            explanation = "; ".join(
                f"#{d.key} by {d.stage} ({d.rule}), {d.variant}"
                for d in sorted(found.values(), key=lambda d: d.key)
            )
            fingerprint = checked[0].fingerprint
        seconds = {"hashguard": time.perf_counter() - start}
        matches, baseline_seconds = self.baselines.match(data)
        matches["hashguard"] = product
        seconds.update(baseline_seconds)
        return matches, seconds, explanation, {"fingerprint": fingerprint}


def _read(path: Path) -> tuple[bytes, Image.Image] | None:
    """The file and its picture at full size: what a user would edit, not the reduced copy
    a worker decodes."""
    try:
        data = path.read_bytes()
        loaded = load_image(data, full_size=True)
    except (ImageError, OSError):
        return None
    return data, loaded.frames[0]


@dataclass
class _Run:
    """What every check needs; worker processes inherit it when they are forked."""

    harness: Harness
    banned: list[str]
    banned_images: list[Image.Image]
    refused: list[str]
    innocent: list[Path]
    others: list[Image.Image]
    edits: Sequence[Edit]
    innocent_edits: int
    seed: int


_run: _Run | None = None


def evaluate(
    banned_dir: Path,
    innocent_dir: Path,
    *,
    edits: Sequence[Edit] = CATALOGUE,
    innocent_edits: int = 2,
    limit_banned: int | None = None,
    limit_innocent: int | None = None,
    distractors: int = 0,
    seed: int = 1,
    jobs: int = 1,
    harness: Harness | None = None,
    progress: Callable[[int], object] | None = None,
    total: Callable[[int], object] | None = None,
) -> Evaluation:
    """Run every edit on every banned image and ``innocent_edits`` on each innocent one.

    ``distractors`` innocent images, chosen at random, are banned too and left out of the
    innocent ones: a bigger blocklist, as in production, with more pictures to confuse the
    edited ones with. ``jobs`` processes share the checks. ``progress`` is called with the
    number of files checked as they finish, and ``total`` once with their number, for a
    progress bar.
    """
    global _run
    harness = harness or Harness()
    if not 0 <= innocent_edits <= len(edits):
        raise ValueError(f"innocent_edits must be from 0 to {len(edits)}, not {innocent_edits}.")
    banned_paths = image_files(banned_dir)[:limit_banned]
    innocent_paths = image_files(innocent_dir)[:limit_innocent]
    result = Evaluation(banned=[], innocent=[], skipped=[], edits=tuple(edits))
    banned_images: list[Image.Image] = []
    for path in banned_paths:
        read = _read(path)
        if read is None:
            result.skipped.append((str(path), "not a readable image"))
            continue
        if harness.ban(len(result.banned), read[0]):
            result.refused.append(path.name)
        result.banned.append(path.name)
        banned_images.append(read[1])
    if not result.banned:
        raise ValueError(f"No readable images in {banned_dir}: nothing to ban.")
    if not innocent_paths:
        # Without them every report would say "no false positive", having compared nothing.
        raise ValueError(
            f"No files in {innocent_dir} to measure false positives against (links are not "
            "followed: copy the images, or hard-link them)."
        )
    banned_set = {path.resolve() for path in banned_paths}
    innocent = [path for path in innocent_paths if path.resolve() not in banned_set]
    if not 0 <= distractors <= len(innocent):
        raise ValueError(f"distractors must be from 0 to {len(innocent)}, not {distractors}.")
    chosen = set(random.Random(f"{seed}:distractors").sample(range(len(innocent)), distractors))
    for index in sorted(chosen):
        read = _read(innocent[index])
        if read is not None:
            harness.ban(len(result.banned) + len(result.distractors), read[0])
            result.distractors.append(innocent[index].name)
    innocent = [path for index, path in enumerate(innocent) if index not in chosen]
    harness.ready()
    others = []
    # Fillers for collages and animations, spread over the whole innocent folder.
    for path in random.Random(seed).sample(innocent, min(_OTHERS, len(innocent))):
        read = _read(path)
        if read is not None:
            small = read[1].copy()
            small.thumbnail((640, 640))
            others.append(small)
    _run = _Run(
        harness, result.banned, banned_images, result.refused, innocent, others, edits,
        innocent_edits, seed,
    )  # fmt: skip
    tasks = [("banned", key) for key in range(len(result.banned))]
    tasks += [("innocent", index) for index in range(len(innocent))]
    if total:
        total(len(result.banned) * len(edits) + len(innocent) * (1 + innocent_edits))
    distances: dict[str, list[int]] = {name: [] for name in ALGORITHMS}
    try:
        if jobs > 1:
            context = multiprocessing.get_context("fork")
            restore = use_threads(jobs)
            try:
                with context.Pool(jobs) as pool:
                    outcomes = pool.imap(_check_task, tasks)
                    _collect(outcomes, tasks, result, distances, progress)
            finally:
                restore()
        else:
            _collect(map(_check_task, tasks), tasks, result, distances, progress)
    finally:
        _run = None
    result.innocent_distances = distances
    return result


def _collect(
    outcomes: Iterable[tuple[list[Sample], dict[str, list[int]], str]],
    tasks: list[tuple[str, int]],
    result: Evaluation,
    distances: dict[str, list[int]],
    progress: Callable[[int], object] | None,
) -> None:
    assert _run is not None
    for (kind, index), (samples, found, skipped) in zip(tasks, outcomes, strict=True):
        result.samples.extend(samples)
        for name, values in found.items():
            distances[name].extend(values)
        if kind == "innocent":
            if skipped:
                result.skipped.append((str(_run.innocent[index]), skipped))
            else:
                result.innocent.append(_run.innocent[index].name)
        if progress:
            progress(len(_run.edits) if kind == "banned" else 1 + _run.innocent_edits)


def _check_task(task: tuple[str, int]) -> tuple[list[Sample], dict[str, list[int]], str]:
    """Check the files made from one image: (samples, innocent distances, skip reason)."""
    run = _run
    assert run is not None
    kind, index = task
    samples: list[Sample] = []
    distances: dict[str, list[int]] = {name: [] for name in ALGORITHMS}
    if kind == "banned":
        name, image = run.banned[index], run.banned_images[index]
        source = run.harness.fingerprints[index]
        for edit in run.edits:
            data = edit.apply(image, random.Random(f"{run.seed}:{name}:{edit.name}"), run.others)
            sample = _sample(run.harness, data, name, edit.name, index, source)
            sample.refused = name in run.refused
            samples.append(sample)
        return samples, distances, ""
    path = run.innocent[index]
    read = _read(path)
    if read is None:
        return samples, distances, "not a readable image"
    data, image = read
    rng = random.Random(f"{run.seed}:{path.name}")
    chosen = rng.sample(list(run.edits), run.innocent_edits)
    files = [("original", data)]
    for edit in chosen:
        edit_rng = random.Random(f"{run.seed}:{path.name}:{edit.name}")
        files.append((edit.name, edit.apply(image, edit_rng, run.others)))
    for edit_name, edited in files:
        sample = _sample(run.harness, edited, path.name, edit_name, None, None)
        samples.append(sample)
        if edit_name == "original" and sample.fingerprint is not None:
            for banned in run.harness.fingerprints.values():
                for algorithm, distance in sample.fingerprint.distance(banned).items():
                    distances[algorithm].append(distance)
    return samples, distances, ""


def _sample(
    harness: Harness,
    data: bytes,
    name: str,
    edit: str,
    key: int | None,
    source: Fingerprint | None,
) -> Sample:
    matches, seconds, explanation, extra = harness.check(data)
    if key is None:
        hits = {system: bool(found) for system, found in matches.items()}
        wrong = {system: len(found) for system, found in matches.items()}
    else:
        hits = {system: key in found for system, found in matches.items()}
        wrong = {system: len(found - {key}) for system, found in matches.items()}
    fingerprint = extra["fingerprint"]
    distances = fingerprint.distance(source) if source and fingerprint else {}
    return Sample(
        source=name,
        edit=edit,
        banned=key is not None,
        hits=hits,
        wrong=wrong,
        seconds=seconds,
        distances=distances,
        explanation=explanation,
        fingerprint=fingerprint,
    )


def recall(samples: Iterable[Sample], system: str) -> float:
    chosen = [sample.hits[system] for sample in samples]
    return sum(chosen) / len(chosen) if chosen else float("nan")


def median_ms(samples: Iterable[Sample], system: str) -> float:
    return statistics.median(sample.seconds[system] for sample in samples) * 1000

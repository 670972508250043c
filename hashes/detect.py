"""Finding banned pictures in an upload, however it was edited: the matcher the workers use.

Two stages, each explaining what it found:

1. **Hashes.** The upload's fingerprint is compared with every banned one under the match
   rule (``hashes/matching.py``), then again turned each of the seven other ways a picture
   can be mirrored or rotated by quarter turns, then for each ``view`` (the upload with
   borders, letterbox or caption bars cut away, each panel of a collage or window, a
   picture pasted inside it) by PDQ at ``region_pdq``, or by pHash and dHash both within
   ``_VIEW_BITS``. This is exact search over the whole blocklist.
2. **Local features.** Crops, small rotations, stretched and embedded copies move every
   hash too far. For those, candidates are nominated by evidence: the banned pictures
   sharing the most keypoints with a region of the upload or of it mirrored, or with a
   view of it, voting with the view's own keypoints (``hashes/feature_index.py``), and
   the few nearest of those its hashes missed narrowly; ORB keypoints with a
   RANSAC-fitted geometry place each, and its pixels decide (``hashes/local.py``). Colours
   can nominate too (``colour_candidates``), off by default: the nearest colours are
   rarely the banned picture's once the blocklist is large. A candidate without stored
   features (a pasted hash) can only match in the first stage. This stage runs only when
   the first found nothing, and stops at the first banned picture it proves: one is
   enough to quarantine the upload.

A banned picture too plain to hash reliably (``is_low_detail``) is never matched fuzzily:
its hashes sit near those of every other smooth image; only exact copies of its file
(its SHA-256) are caught.
"""

import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum

import cv2
import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits

from hashes.algorithms import (
    ALGORITHMS,
    DIHEDRAL,
    MATCH_SIDE,
    Fingerprint,
    distinct,
    fingerprint_image,
    fingerprint_turns,
    grey_levels,
)
from hashes.feature_index import FeatureIndex, Region
from hashes.index import decode, encode
from hashes.loading import DECODE_SIDE, LoadedImage
from hashes.local import (
    MIN_AGREEING,
    QUERY_FEATURES,
    LocalFeatures,
    Verification,
    local_features,
    reference_local_features,
    upload_features,
    verify,
    verify_whole,
)
from hashes.matching import (
    FingerprintStore,
    Match,
    Matcher,
    MatchRule,
    SharedSearch,
    is_low_detail,
    low_detail_rows,
    search_radii,
    tags,
)
from hashes.views import WORK_SIDE, View, area, colour_copy, cut, iou, views, working_copy

HASH_SIDE = 256
# The side views are hashed at. PDQ box-filters by ceil(side / 128) pixels: at 256 the
# window is even, off centre, and a picture's PDQ lay a median 20 bits from its
# full-resolution hash (corpus); at 384 (odd) 6.
VIEW_HASH_SIDE = 384
QUERY_FEATURE_SIDE = DECODE_SIDE
# An upload's pixels for the photometric check are the copy its views are found on.
QUERY_PIXELS_SIDE = WORK_SIDE
COLOUR_BINS = 4
HUE_TURNS = 8
_VIEWS_VERIFIED = 2
# A view's pHash and dHash both this near a banned picture's match it.
_VIEW_BITS = 4
_PER_REGION = 2
# The pictures each view of the upload nominates, from votes over all of it.
_PER_VIEW = 4
_ALL = ((0.0, 0.0, 1.0, 1.0),)
_NEAR_VERIFIED = 3
# A near miss is verified only when one as near would come by chance (the banned
# pictures' hashes taken as random bits) in fewer than one upload in this many: among
# 100,000 banned pictures, a pHash within 16 bits comes about eleven times an upload by
# chance, each costing a verification, where a real near miss has its other hashes near
# too (docs/calibration.md).
_NEAR_CHANCE = 0.01
# Views up to this share of the upload vote with their own local features.
_VOTING_AREA = 0.55
# Pictures a build files in the keypoint index at a time, rather than holding all their
# words at once.
_FILED_AT_ONCE = 10_000

# (name, how to describe the upload, the PIL transpose that undoes it), in the order of
# algorithms.DIHEDRAL: an upload whose turn matches was turned the other way.
TURNS: tuple[tuple[str, str, Image.Transpose | None], ...] = tuple(
    (name, words, undo)
    for (name, words), undo in zip(
        (
            ("as_is", "as is"),
            ("turned_right", "turned 90° clockwise"),
            ("turned_180", "turned 180°"),
            ("turned_left", "turned 90° anticlockwise"),
            ("flipped", "flipped upside down"),
            ("mirrored", "mirrored"),
            ("transposed", "mirrored and turned 90°"),
            ("transversed", "mirrored and turned 270°"),
        ),
        DIHEDRAL,
        strict=True,
    )
)

_MIRROR = Image.Transpose.FLIP_LEFT_RIGHT
# The side a view is scaled to (enlarged twice at most) before its keypoints are found.
_VIEW_SIDE = 512
_MIRRORED = "/mirrored"  # the name of the mirrored upload's features

VIEW_LABELS = {
    "trim": "with its border or letterbox bars cut away",
    "trim_caption": "with a caption bar cut away",
    "panel": "as one panel of a collage or screenshot",
    "inset": "as a picture inside the upload",
}


@dataclass(frozen=True)
class DetectConfig:
    """The second-stage and view settings, with their defaults; every configuration is
    checked here, however it is built."""

    region_pdq: int = 31
    near_pdq: int = 90
    near_phash: int = 16
    colour_candidates: int = 0
    max_candidates: int = 10
    pixel_agreement: float = MIN_AGREEING
    local_features: bool = True

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> "DetectConfig":
        if not isinstance(config, Mapping):
            raise ValueError(f"Detection settings must be a JSON object, not {config!r}.")
        unknown = set(config) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"Unknown detection settings {sorted(unknown)}; expected some of "
                f"{', '.join(cls.__dataclass_fields__)}."
            )
        return cls(**config)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        for name in ("region_pdq", "near_pdq"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= 256:
                raise ValueError(f"{name} must be a whole number from 0 to 256, not {value!r}.")
        for name in ("near_phash", "colour_candidates", "max_candidates"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= 64:
                raise ValueError(f"{name} must be a whole number from 0 to 64, not {value!r}.")
        agreement = self.pixel_agreement
        if type(agreement) not in (int, float) or not 0.5 <= agreement <= 1:
            raise ValueError(f"pixel_agreement must be a share from 0.5 to 1, not {agreement!r}.")
        if type(self.local_features) is not bool:
            raise ValueError("local_features must be true or false.")


DEFAULT_DETECT_CONFIG: dict[str, object] = asdict(DetectConfig())


@dataclass
class Probe:
    """One frame of an upload, with everything the stages compare, computed once."""

    fingerprint: Fingerprint
    turns: list[tuple[str, Fingerprint]]
    regions: list[tuple[View, Fingerprint]]
    # The frame as decoded, RGB: what colours are compared on, when colour candidates are
    # configured.
    image: Image.Image
    # The frame's luma in whole grey levels, QUERY_FEATURE_SIDE across: what its local
    # features are found on.
    grey: Image.Image
    # The copy the views were found on, QUERY_PIXELS_SIDE across, in colour: the upload's
    # pixels for the photometric check.
    work: Image.Image
    _features: dict[str, LocalFeatures] = field(default_factory=dict)
    _mirror: Callable[[], LocalFeatures] = field(init=False, repr=False, compare=False)

    @functools.cached_property
    def small(self) -> Image.Image:
        return colour_copy(self.image, HASH_SIDE)

    @functools.cached_property
    def parts(self) -> list[Image.Image]:
        """Each view VIEW_HASH_SIDE across, in colour."""
        return [colour_copy(cut(self.image, view), VIEW_HASH_SIDE) for view, _ in self.regions]

    @functools.cached_property
    def colours(self) -> np.ndarray:
        """The colour signatures of the upload (HASH_SIDE across), then of each view."""
        return np.stack([colour_signature(picture) for picture in (self.small, *self.parts)])

    @functools.cached_property
    def hue_turned(self) -> np.ndarray:
        """The colour signatures of the upload with its hues turned."""
        return hue_turned_signatures(self.small)

    def features(self, view: View | None = None, *, mirrored: bool = False) -> LocalFeatures:
        """The local features of the frame, or of it mirrored, or of a view of it."""
        name = view.name if view else _MIRRORED if mirrored else ""
        if view is None and "" not in self._features:
            self._features[""], self._mirror = upload_features(
                self.grey, QUERY_FEATURES, QUERY_FEATURE_SIDE, QUERY_PIXELS_SIDE, self.work
            )
        if name not in self._features and view is None:  # mirrored, made once
            self._features[name] = self._mirror()
        if name not in self._features and view is not None:
            picture = cut(self.grey, view)
            # Each view is searched at _VIEW_SIDE, about the size banned pictures' own
            # keypoints were found at: a small one enlarged (up to twice), as ORB's
            # pyramid reaches only down from the picture it is given and a copy pasted at
            # half size shows the banned picture's corners at their own scale only when
            # enlarged; a large one reduced, at a fraction of the cost.
            scale = min(2.0, _VIEW_SIDE / max(picture.size))
            if scale != 1:
                size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
                picture = picture.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
            self._features[name] = local_features(
                picture,
                QUERY_FEATURES,
                side=QUERY_FEATURE_SIDE,
                pixels_side=QUERY_PIXELS_SIDE,
                colour=True,
                shown=cut(self.work, view),
            )
        return self._features[name]


class Stage(StrEnum):
    """Which rule found a banned picture in an upload."""

    EXACT = "sha256"  # the same file, byte for byte
    HASH = "hash"  # whole-picture hashes, of the upload, its turns or its views
    LOCAL = "local features"  # keypoints placed it, its pixels agreed


@dataclass(frozen=True)
class Detection:
    key: int
    stage: Stage
    rule: str
    distances: dict[str, int]
    variant: str  # how the upload shows the banned picture, in words
    frame: int = 0
    partial: bool = False  # found as a part of the upload (a view, a crop), not whole
    # Where: how the upload is turned from the banned picture (a name in TURNS), where the
    # banned picture lies in it (left, top, right, bottom as fractions; None: all of it),
    # and by how many degrees it is rotated there.
    turn: str = "as_is"
    box: tuple[float, float, float, float] | None = None
    rotation: float = 0.0

    def describe(self) -> str:
        """How it was found, in the review queue's words."""
        distances = ", ".join(f"{name} {value}" for name, value in self.distances.items())
        where = f" (frame {self.frame})" if self.frame else ""
        return f"by {self.stage} ({self.rule}){where}, {self.variant}: {distances}"


Limits = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class BannedPicture:
    """What ``Detector`` keeps in memory for one banned frame."""

    fingerprint: Fingerprint
    colours: np.ndarray | None = None  # None: no reference image, hash stage only
    sha256: str = ""  # of the banned file: its exact copies match whatever else differs
    md5: str = ""  # the same, as shared hash lists give it
    limits: "Limits" = ()  # its own (algorithm, distance) limits, in place of the rule's
    allow: bool = False  # known-good: see Detector.voided
    # The words its local features are filed under (feature_index.indexed_words); None:
    # nominated only by near hashes and colours. And those of it mirrored; None: stored
    # before they were, its mirrored copies nominated by the upload mirrored.
    words: np.ndarray | None = None
    mirrored_words: np.ndarray | None = None


@dataclass(frozen=True)
class HashRows:
    """Banned pictures known by their hashes alone, as columns: no file digests, colours
    or known-good flag. What an imported hash list becomes, millions of rows at a time."""

    keys: np.ndarray  # int64
    # For each algorithm, which rows have its hash (a mask) and those rows' codes, as
    # ``index.decode`` gives them.
    hashes: Mapping[str, tuple[np.ndarray, np.ndarray]]
    qualities: np.ndarray  # int32: PDQ quality, -1 where not known

    @classmethod
    def from_hex(
        cls,
        keys: Sequence[int],
        hashes: Mapping[str, Sequence[str]],
        qualities: Sequence[int | None],
    ) -> "HashRows":
        """Rows of hex codes ("" where a row has none) and qualities (None where not
        known); ValueError names a malformed code."""
        rows = len(keys)
        return cls(
            np.asarray(keys, dtype=np.int64),
            {
                name: (
                    np.fromiter(map(bool, column), bool, rows),
                    decode(list(filter(None, column)), ALGORITHMS[name].bits),
                )
                for name, column in hashes.items()
            },
            np.fromiter(
                (-1 if quality is None else quality for quality in qualities), np.int32, rows
            ),
        )


def _hex_rows(codes: Mapping[str, tuple[np.ndarray, np.ndarray]], rows: list[int]) -> list[dict]:
    """The hex codes of these rows of ``HashRows.hashes``, by algorithm."""
    found: list[dict[str, str]] = [{} for _ in rows]
    for name, (present, held) in codes.items():
        at = np.cumsum(present) - 1
        for hashes, row in zip(found, rows, strict=True):
            if present[row]:
                hashes[name] = encode(held[at[row]])
    return found


def colour_signature(image: Image.Image) -> np.ndarray:
    """A unit vector of the picture's colour mix, little changed by crops and rotations."""
    return _signature(_colour_sample(image))


def hue_turned_signatures(image: Image.Image) -> np.ndarray:
    """Colour signatures of the picture with its hues turned by each eighth of a turn.

    A hue shift moves the colour mix away from the banned picture's, so that colour
    alone would not nominate it; one of these is within 22.5 degrees of undoing it. The
    hue is turned as image editors turn it (HSV, the same as HSL's), keeping each
    pixel's brightest and darkest channel.
    """
    hue, saturation, value = Image.fromarray(_colour_sample(image)).convert("HSV").split()
    signatures = []
    for step in range(1, HUE_TURNS):
        shift = step * 256 // HUE_TURNS
        turns = [(level + shift) % 256 for level in range(256)]
        turned = Image.merge("HSV", (hue.point(turns), saturation, value))
        signatures.append(_signature(np.asarray(turned.convert("RGB"))))
    return np.stack(signatures)


def _colour_sample(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR))


def _signature(pixels: np.ndarray) -> np.ndarray:
    bins = (pixels // (256 // COLOUR_BINS)).reshape(-1, 3).astype(np.int32)
    codes = (bins[:, 0] * COLOUR_BINS + bins[:, 1]) * COLOUR_BINS + bins[:, 2]
    counts = np.bincount(codes, minlength=COLOUR_BINS**3).astype(np.float32)
    vector = np.sqrt(counts / counts.sum())
    return (vector / np.linalg.norm(vector)).astype(np.float16)


def probe(frame: Image.Image, *, regions: bool = True) -> Probe:
    """Everything the detector compares for one RGB frame of an upload.

    The hashes and local features are found on one copy of its luma, QUERY_FEATURE_SIDE
    across (the size a large JPEG is decoded at): the fingerprint and all eight turns on
    it as it is (MATCH_SIDE), each view on its own part of it, and local features on it
    rounded to grey levels. The views are found on a colour copy WORK_SIDE across.
    """
    luma = query_copy(frame)
    grey = grey_levels(luma)
    work = colour_copy(frame)
    fingerprints = fingerprint_turns(working_copy(luma, MATCH_SIDE))
    turns = [
        (name, turned)
        for (name, _, undo), turned in zip(TURNS, fingerprints, strict=True)
        if undo is not None
    ]
    found = [
        (view, fingerprint_image(working_copy(cut(luma, view), VIEW_HASH_SIDE), exported=False))
        for view in (views(work) if regions else ())
    ]
    return Probe(fingerprints[0], turns, found, frame, grey, work)


def query_copy(frame: Image.Image) -> Image.Image:
    """The luma of an RGB frame of an upload, QUERY_FEATURE_SIDE across, unrounded ("F"),
    as PDQ takes the luma of a banned picture: what its hashes are found on. Scaling one
    channel, not three, costs a third (a 1008-px frame: 2.3 ms, not 6.4)."""
    return working_copy(frame.convert("F"), QUERY_FEATURE_SIDE)


def use_threads(processes: int) -> Callable[[], None]:
    """Keep OpenCV and numpy's BLAS, on which the detector's work runs, to this process's
    share of the cores when a pool of ``processes`` shares them, here and in the
    processes it forks after; what puts the limits as they were back. Both spread a call
    over every core by default: without a share each, a pool's threads fight for the
    cores (BLAS's spin as they wait). Call it before forking the pool: BLAS cannot be
    limited in a process forked from one that has used its threads (the call hangs)."""
    count = max(1, (os.cpu_count() or 1) // max(1, processes))
    opencv = cv2.getNumThreads()
    blas = threadpool_limits(count, user_api="blas")
    cv2.setNumThreads(count)

    def restore() -> None:
        cv2.setNumThreads(opencv)
        blas.restore_original_limits()

    return restore


def probes(loaded: LoadedImage) -> list[Probe]:
    """What the detector compares for a loaded image: one probe per distinct frame, each
    with its own fingerprint; the first with its views and local features, later frames
    whole. The worker, the harness and the benchmarks all call this."""
    return distinct(
        (probe(frame, regions=index == 0) for index, frame in enumerate(loaded.frames)),
        lambda item: item.fingerprint,
    )


def reference_features(frame: Image.Image) -> tuple[LocalFeatures, np.ndarray]:
    """The local features and colour signature to store for a banned frame."""
    return reference_local_features(frame), colour_signature(working_copy(frame, HASH_SIDE))


class Detector:
    """The banned pictures, searched by both stages.

    A picture may carry its own distance limits (its bank's), which take the place of
    that algorithm's distance in every group of the rule; pictures with the same limits
    are one group of the store, whose indexes every group shares. A picture may also be
    known-good (``allow``): found in an upload, it voids the detections it accounts for
    (``voided``); its limits may only make the rule stricter, so that a loose known-good
    list cannot void real matches.
    """

    def __init__(
        self,
        rule: MatchRule,
        config: DetectConfig | None = None,
        load_features: Callable[[Iterable[int]], Mapping[int, LocalFeatures]] | None = None,
    ) -> None:
        self.rule = rule
        self.config = config or DetectConfig()
        self._matchers: dict[tuple[Limits, bool], tuple[Matcher, Matcher | None]] = {}
        # Candidates only: a crop moves PDQ far while pHash stays near, so no veto here.
        self._near = Matcher(
            MatchRule(
                groups=({"pdq": self.config.near_pdq}, {"phash": self.config.near_phash}),
                pdq_min_quality=rule.pdq_min_quality,
                veto=1.0,
            )
        )
        self.load_features = load_features
        self._files = _Files()
        # Fuzzy pictures' fingerprints are in the store; those matched only as files
        # (no hashes, or too plain) here.
        self._store = FingerprintStore(search_radii(rule))
        self._plain: dict[int, Fingerprint] = {}
        self._allow: set[int] = set()
        self._colours = _ColourTable()
        self._feature_index = FeatureIndex()

    def __len__(self) -> int:
        """The pictures matched fuzzily (not only as files)."""
        return len(self._store)

    def __getstate__(self) -> dict[str, object]:
        """Pickled (``hashes.snapshot``) without ``load_features``, which belongs to the
        process: the loading one gives its own."""
        return {**self.__dict__, "load_features": None}

    def _matchers_for(
        self, limits: Limits, *, tighten: bool = False
    ) -> tuple[Matcher, Matcher | None]:
        """The whole-picture and view matchers of pictures with these limits (which, with
        ``tighten``, may only make the rule stricter)."""
        if (limits, tighten) not in self._matchers:
            rule = self.rule.with_limits(dict(limits), tighten=tighten)
            reach = {
                name: max(group[name] for group in rule.groups if name in group)
                for name in ("pdq", "phash", "dhash")
                if any(name in group for group in rule.groups)
            }
            # A view matches by PDQ, or by pHash and dHash together when both are near
            # identical: each alone has too many chance matches among many views.
            groups = [{"pdq": min(self.config.region_pdq, reach["pdq"])}] if "pdq" in reach else []
            if "phash" in reach and "dhash" in reach:
                groups.append({name: min(_VIEW_BITS, reach[name]) for name in ("phash", "dhash")})
            group = len(self._matchers)
            region = (
                Matcher(
                    MatchRule(
                        groups=tuple(groups), pdq_min_quality=rule.pdq_min_quality, veto=rule.veto
                    ),
                    self._store,
                    group,
                )
                if groups
                else None
            )
            self._matchers[(limits, tighten)] = (Matcher(rule, self._store, group), region)
        return self._matchers[(limits, tighten)]

    def add_all(
        self, pictures: Mapping[int, BannedPicture] | Iterable[tuple[int, BannedPicture]]
    ) -> None:
        """Ban many pictures at once (a rebuild, which may stream them as (key, picture)
        pairs), or a few more (a change followed); a key already held is replaced. Fuzzy
        matching skips plain ones."""
        items = pictures.items() if isinstance(pictures, Mapping) else pictures
        keys, colours = [], []
        near: list[tuple[int, Fingerprint]] = []
        filed: list[tuple[int, np.ndarray, np.ndarray | None]] = []
        self._matchers_for(())
        building = self.is_empty()

        def fuzzy() -> Iterator[tuple[int, Fingerprint, int]]:
            for key, picture in items:
                if not building and (
                    key in self._plain or key in self._store or key in self._files
                ):
                    self.remove(key)
                if picture.allow:
                    self._allow.add(key)
                digests = tuple(digest for digest in (picture.sha256, picture.md5) if digest)
                if digests:
                    self._files.add(key, digests)
                    if not picture.fingerprint.hashes:
                        continue  # a file's digests alone: held by them
                if not picture.fingerprint.hashes or is_low_detail(
                    picture.fingerprint, self.rule.pdq_min_quality
                ):
                    self._plain[key] = picture.fingerprint
                    continue
                whole, _ = self._matchers_for(picture.limits, tighten=picture.allow)
                # Near misses are candidates for the local stage, which needs the stored
                # features of a banned picture: those with none are left out of its index.
                signature = None if picture.allow else picture.colours
                if signature is not None:
                    near.append((key, picture.fingerprint))
                    keys.append(key)
                    colours.append(signature)
                    if picture.words is not None:
                        filed.append((key, picture.words, picture.mirrored_words))
                    if len(filed) == _FILED_AT_ONCE:
                        self._feature_index.add_many(filed)
                        filed.clear()
                yield key, picture.fingerprint, whole.group

        self._store.extend(fuzzy())
        if building:
            self._files.pack()
        self._near.add_many(near)
        if colours:
            self._colours.extend(keys, np.stack(colours).astype(np.float32))
        self._feature_index.add_many(filed)

    def add_hash_rows(self, batches: Iterable[HashRows], limits: Limits = ()) -> None:
        """Ban pictures known by their hashes alone, all with these limits, in a build:
        the keys must not be held. They are checked and packed a batch at a time, as
        arrays, without an object for each: ``add_all`` of the same pictures does the same
        at several times the cost."""
        whole, _ = self._matchers_for(limits)
        parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        count = 0
        for batch in batches:
            keys, codes = batch.keys, batch.hashes
            pdq = codes["pdq"][0] if "pdq" in codes else np.zeros(len(keys), dtype=bool)
            # A quality says nothing without the PDQ hash it rates.
            qualities = np.where(pdq, batch.qualities, -1).astype(np.int32)
            low = low_detail_rows(codes, qualities, self.rule.pdq_min_quality)
            plain = np.flatnonzero(low).tolist()
            for row, hashes in zip(plain, _hex_rows(codes, plain), strict=True):
                quality = int(qualities[row])
                self._plain[int(keys[row])] = Fingerprint(hashes, None if quality < 0 else quality)
            fuzzy = ~low
            count += int(fuzzy.sum())
            batch_tags = tags(whole.group, qualities)
            for name, (present, held) in codes.items():
                kept = present & fuzzy
                parts.setdefault(name, []).append(
                    (keys[kept], held[fuzzy[present]], batch_tags[kept])
                )
        self._store.add_new(parts, count)

    def remove(self, key: int) -> None:
        """Unban one picture, wherever it is held; a key not held is ignored."""
        held = [self._plain.pop(key, None) is not None, self._files.remove(key)]
        if not (self._store.remove(key) or any(held)):
            return
        self._allow.discard(key)
        self._near.remove(key)
        self._colours.remove(key)
        self._feature_index.remove(key)

    def fingerprint(self, key: int) -> Fingerprint | None:
        """The banned picture's fingerprint, or None when it is not held."""
        plain = self._plain.get(key)
        if plain is not None:
            return plain
        found = self._store.get(key)
        if found is not None:
            return found[0]
        return Fingerprint({}) if key in self._files else None

    def is_empty(self) -> bool:
        """Whether it holds no picture at all, fuzzy or as a file."""
        return not self._plain and not len(self._store) and not len(self._files)

    @property
    def mirrors_all(self) -> bool:
        """Whether every picture its keypoint index holds is filed mirrored too; else
        each upload's features are found mirrored as well, to nominate those that are not
        (banned before their mirrored words were stored: ``manage.py rehash``)."""
        return self._feature_index.mirrors_all

    def bans_file(self, *digests: str) -> bool:
        """Whether a file with this sha256 (or MD5) is banned as it is (and not allowed)."""
        keys = {key for digest in digests if digest for key in self._files.keys(digest)}
        return bool(keys) and not keys & self._allow

    def files(self, digest: str) -> list[int]:
        """The keys banned (or allowed) as files with this sha256 or MD5."""
        return self._files.keys(digest)

    def lookup(self, fingerprint: Fingerprint) -> list[Match]:
        """The pictures a bare fingerprint matches as it is (no turns, views or local
        features: there is no image), under the rule and each picture's own limits."""
        wholes = [whole for whole, _ in self._matchers.values()]
        search = SharedSearch(self._store, wholes)
        found = [match for whole in wholes for match in whole.match(fingerprint, search)]
        return sorted(found, key=lambda match: (sum(match.distances.values()), match.key))

    def is_allowed(self, key: int) -> bool:
        return key in self._allow

    def voided(self, found: Mapping[int, Detection]) -> frozenset[int]:
        """The detections a known-good picture accounts for, which do not count.

        The upload being a known-good file byte for byte voids every other detection.
        Otherwise a known-good picture found whole in a frame voids only the banned
        pictures also found whole in that frame by their hashes: both are then the same
        picture as that frame. A banned picture found as a part (a panel, a crop, one
        placed inside the known-good picture) or in another frame is other content, and
        counts.
        """
        allowed = [hit for key, hit in found.items() if key in self._allow]
        others = {key: hit for key, hit in found.items() if key not in self._allow}
        if any(hit.stage == Stage.EXACT for hit in allowed):
            return frozenset(others)
        frames = {hit.frame for hit in allowed if not hit.partial}
        return frozenset(
            key
            for key, hit in others.items()
            if hit.stage == Stage.HASH and not hit.partial and hit.frame in frames
        )

    def detect(self, probes: list[Probe], sha256: str = "", md5: str = "") -> dict[int, Detection]:
        """The best detection per banned key: exact copies of a banned file (by the
        upload's ``sha256`` or ``md5``), then the hash stage over the frames in ``probes``
        (first first), then, when the hash stage found no banned picture (known-good ones
        do not count), the local-feature stage."""
        found: dict[int, Detection] = {}
        for rule, digest in (("sha256", sha256), ("md5", md5)):
            for key in self._files.keys(digest) if digest else []:
                banned = self.fingerprint(key)
                distances = probes[0].fingerprint.distance(banned) if probes and banned else {}
                found.setdefault(key, Detection(key, Stage.EXACT, rule, distances, "the same file"))
        hashed: dict[int, Detection] = {}
        for frame, item in enumerate(probes):
            for detection in self._hash_stage(item, frame):
                hashed.setdefault(detection.key, detection)
        # The second stage costs far more, and one proof is enough to quarantine; an exact
        # copy does not stand in for it, since a moderator may let that one pass.
        only_known_good = all(key in self._allow for key in hashed)
        if only_known_good and self.config.local_features and self.load_features and probes:
            proof = self._local_stage(probes[0])
            if proof is not None:
                hashed[proof.key] = proof
        for key, detection in hashed.items():
            found.setdefault(key, detection)
        return found

    def _hash_stage(self, item: Probe, frame: int) -> list[Detection]:
        found = []
        # Pictures with their own limits are other groups of the same store: each hash of
        # the upload is looked up once for all of them.
        matchers = self._matchers.values()
        whole_search = SharedSearch(self._store, [whole for whole, _ in matchers])
        region_search = SharedSearch(
            self._store, [region for _, region in matchers if region is not None]
        )
        whole_search.prefetch([item.fingerprint, *(turned for _, turned in item.turns)])
        region_search.prefetch([fingerprint for _, fingerprint in item.regions])
        for whole, region in matchers:
            for name, fingerprint in (("as_is", item.fingerprint), *item.turns):
                for match in whole.match(fingerprint, whole_search):
                    found.append(
                        Detection(
                            match.key,
                            Stage.HASH,
                            match.rule,
                            match.distances,
                            _turn_label(name),
                            frame,
                            turn=name,
                        )
                    )
            for view, fingerprint in item.regions if region is not None else ():
                for match in region.match(fingerprint, region_search):  # type: ignore[union-attr]
                    found.append(
                        Detection(
                            match.key,
                            Stage.HASH,
                            match.rule,
                            match.distances,
                            _view_label(view),
                            frame,
                            partial=True,
                            box=view.box,
                        )
                    )
        return found

    def _local_stage(self, item: Probe) -> Detection | None:
        candidates = self._candidates(item)
        if not candidates:
            return None
        stored = self.load_features(list(candidates))  # type: ignore[misc]
        agreeing = self.config.pixel_agreement
        for key, candidate in candidates.items():
            banned = stored.get(key)
            if banned is None:
                continue
            result = None
            if candidate.as_is:
                # The whole upload first; then the views where the candidate was seen, in
                # which a small copy among other pictures has more of its own keypoints.
                result = verify(banned, item.features(), agreeing)
                if result is None and candidate.whole:
                    result = verify_whole(banned, item.features(), agreeing)
                for view in candidate.views[:_VIEWS_VERIFIED]:
                    if result is not None:
                        break
                    result = verify(banned, item.features(view), agreeing)
                    result = result.within(view.box) if result else None
            turn = "mirrored" if result is None and candidate.mirrored else "as_is"
            if turn == "mirrored":
                result = verify(banned, item.features(mirrored=True), agreeing)
                result = result.turned_back(_MIRROR) if result else None
            if result is not None:
                return self._local_detection(key, item, result, turn)
        return None

    def _candidates(self, item: Probe) -> dict[int, "_Candidate"]:
        """The banned pictures (with stored features) to verify, in order of promise, at
        most max_candidates: the nearest hash misses, then those sharing the most local
        features with a region of the upload or of it mirrored, then (when configured)
        those nearest in colour. Only the _NEAR_VERIFIED near misses least likely by chance
        are taken."""
        candidates: dict[int, _Candidate] = {}
        for key, name in self._near_misses(item)[:_NEAR_VERIFIED]:
            candidate = candidates.setdefault(key, _Candidate())
            candidate.as_is = True
            if name in ("as_is", "negative"):
                # Laid over the whole upload, edge to edge, only where the whole-picture
                # hashes are near, or all but opposite (a negative turns every bit): the
                # upload is then most likely all of the picture, if any.
                candidate.whole = True
            else:
                # A near miss of the upload mirrored (a mirrored crop) is verified on the
                # mirrored upload's features too. ORB's points are found turned by any
                # angle: a copy turned as well needs no features of its own.
                candidate.mirrored = True
        if len(self._feature_index):  # else no picture to vote for: no keypoints to find
            self._add_nominations(item, candidates)
        if self.config.colour_candidates:
            self._add_colour_candidates(item, candidates)
        verified = [key for key in candidates if key in self._colours]
        return {key: candidates[key] for key in verified[: self.config.max_candidates]}

    def _add_nominations(self, item: Probe, candidates: dict[int, "_Candidate"]) -> None:
        """Add those the keypoint index nominates. A small copy among other pictures, or
        in a small upload, has too few of the upload's keypoints to win its vote: each
        view up to half the upload (a pasted picture, a collage's tile) votes with its own
        as well. The best of every vote come first, then the second best..."""
        uploads = [item.features()]
        if not self.mirrors_all:
            uploads.append(item.features(mirrored=True))
        votes: list[tuple[View | None, list[tuple[int, int, list[Region]]]]]
        votes = [(None, self._feature_index.nominate(uploads, _PER_REGION))]
        for voting, _ in item.regions:
            if area(voting.box) <= _VOTING_AREA:
                nominated = self._feature_index.nominate([item.features(voting)], _PER_VIEW, _ALL)
                # Its mirrored ones are left out: verified mirrored, they would be laid
                # over the whole upload, not the view.
                votes.append((voting, [found for found in nominated if not found[1]]))
        ranked = sorted(
            [
                (place, key, which, regions, view)
                for view, nominated in votes
                for place, (key, which, regions) in enumerate(nominated)
            ],
            key=lambda nomination: nomination[0],
        )
        for _, key, which, regions, view in ranked:
            candidate = candidates.setdefault(key, _Candidate())
            if which:
                # Nominated mirrored (by its mirrored words, or the upload mirrored):
                # verified mirrored (and only so, unless nominated as it is too).
                candidate.mirrored = True
                continue
            candidate.as_is = True
            if view:
                candidate.voted.append(view)
            else:
                candidate.covering.extend(_overlapping(item.regions, regions))

    def _near_misses(self, item: Probe) -> list[tuple[int, str]]:
        """(key, the way of the upload it is near) for the banned pictures near the upload,
        its negative or it mirrored, nearer than chance would bring one given how many
        are compared (see _NEAR_CHANCE), least likely by chance first."""
        found: dict[int, tuple[float, str]] = {}
        negative = ("negative", _inverted(item.fingerprint))
        mirrored = [(name, turned) for name, turned in item.turns if name == "mirrored"]
        ways = [("as_is", item.fingerprint), negative, *mirrored]
        compared = len(ways) * len(self._near)
        matched = self._near.match_many([fingerprint for _, fingerprint in ways])
        for (name, _), matches in zip(ways, matched, strict=True):
            for match in matches:
                chance = match.chance
                if compared * chance > _NEAR_CHANCE:
                    continue
                if match.key not in found or chance < found[match.key][0]:
                    found[match.key] = (chance, name)
        ranked = sorted(found.items(), key=lambda pair: (pair[1][0], pair[0]))
        return [(key, name) for key, (_, name) in ranked]

    def _add_colour_candidates(self, item: Probe, candidates: dict[int, "_Candidate"]) -> None:
        """Add those nearest in colour: the closest pairs of (upload or view, banned
        picture) first, whichever view they come from (a collage's tile is all but equal
        to its banned picture, where the nearest pictures to its other tiles are merely
        alike), and those nearest the upload with its hues turned back (recoloured
        copies) among them by how near they are."""
        views_of = [None, *(view for view, _ in item.regions)]
        for _, index, key in sorted(
            self._nearest_colours(item.colours, item.hue_turned), reverse=True
        ):
            candidate = candidates.setdefault(key, _Candidate())
            candidate.as_is = True
            view = views_of[index]
            if view is not None:
                candidate.covering.append(view)

    def _local_detection(
        self, key: int, item: Probe, result: Verification, turn: str = "as_is"
    ) -> Detection:
        banned = self.fingerprint(key)
        distances = item.fingerprint.distance(banned) if banned else {}
        described = result.describe()
        return Detection(
            key,
            Stage.LOCAL,
            f"ORB+RANSAC, {result.inliers} points" if result.inliers else "pixel comparison",
            distances,
            described if turn == "as_is" else f"{_turn_label(turn)}, {described}",
            partial=True,
            turn=turn,
            box=result.box,
            rotation=result.rotation,
        )

    def _nearest_colours(
        self, signatures: np.ndarray, hue_turned: np.ndarray
    ) -> list[tuple[float, int, int]]:
        """(similarity, index of the signature, banned key) for the banned pictures nearest
        each colour signature, and half as many nearest any of the upload's hue-turned
        ones, which count as the upload's own (index 0)."""
        table = self._colours
        count = min(self.config.colour_candidates, len(table))
        if not count:
            return []
        # One pass over the matrix for all the signatures of an upload.
        stacked = np.vstack([signatures, hue_turned]).astype(np.float32)
        scores = table.rows() @ stacked.T
        found = []
        for index, column in enumerate(scores[:, : len(signatures)].T):
            for row in np.argpartition(-column, count - 1)[:count]:
                found.append((float(column[row]), index, table.key(row)))
        best = scores[:, len(signatures) :].max(axis=1)
        fewer = min(max(1, self.config.colour_candidates // 2), len(table))
        for row in np.argpartition(-best, fewer - 1)[:fewer]:
            found.append((float(best[row]), 0, table.key(row)))
        return found


@dataclass
class _Candidate:
    """How to verify one banned picture against an upload."""

    as_is: bool = False  # against the upload as it is (and its views)
    whole: bool = False  # laid over all of the upload too, when its points are too few
    mirrored: bool = False  # against the upload mirrored as well
    voted: list[View] = field(default_factory=list)  # the views whose own features nominated it
    # The views covering the regions of the upload whose features nominated it, or (by
    # colour) those whose colours are nearest.
    covering: list[View] = field(default_factory=list)

    @property
    def views(self) -> list[View]:
        """The views to verify it on, in order of promise."""
        return list(dict.fromkeys([*self.voted, *self.covering]))


def _overlapping(
    views: Sequence[tuple[View, Fingerprint]], regions: Sequence[Region]
) -> list[View]:
    """The views covering much of a region (a third of their union or more), the best
    covered first: where the keypoints that nominated a picture lie."""
    scored = []
    for view, _ in views:
        best = max(iou(view.box, region) for region in regions)
        if best >= 1 / 3:
            scored.append((-best, view))
    return [view for _, view in sorted(scored, key=lambda pair: pair[0])]


class KeySet:
    """A set of keys, held as the sorted array it was made of (shared when a blocklist is
    mapped from a file, as the rest of its arrays) and the keys added and removed since,
    in small sets of the process's own: millions of keys cost 8 bytes each on the
    machine, not a Python set (60 bytes a key) in every process."""

    def __init__(self, keys: Iterable[int] = ()) -> None:
        self._held = np.unique(np.fromiter(keys, dtype=np.int64))
        self._added: set[int] = set()
        self._removed: set[int] = set()

    def _holds(self, key: int) -> bool:
        at = int(np.searchsorted(self._held, key))
        return at < len(self._held) and int(self._held[at]) == key

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, int):
            return False
        return key in self._added or (key not in self._removed and self._holds(key))

    def __len__(self) -> int:
        return len(self._held) - len(self._removed) + len(self._added)

    def __iter__(self) -> Iterator[int]:
        yield from (key for key in self._held.tolist() if key not in self._removed)
        yield from self._added

    def add(self, key: int) -> None:
        if self._holds(key):
            self._removed.discard(key)
        else:
            self._added.add(key)

    def discard(self, key: int) -> None:
        self._added.discard(key)
        if self._holds(key):
            self._removed.add(key)


class _Files:
    """Banned files by SHA-256 or MD5 (hex): the keys of each digest. Those a build adds
    are packed into arrays, about 80 bytes a digest, which a mapped blocklist shares with
    every process (as dicts they cost about 1.1 kB a ban in each); those added since are
    held in dicts, and those removed since are masked."""

    def __init__(self) -> None:
        self._digests = np.zeros(0, dtype="S64")  # packed, in order
        self._keys = np.zeros(0, dtype=np.int64)  # each packed digest's key
        self._packed = KeySet()  # the packed keys still held
        self._added: dict[str, list[int]] = {}
        self._added_keys: dict[int, tuple[str, ...]] = {}

    def __len__(self) -> int:
        """The keys held."""
        return len(self._packed) + len(self._added_keys)

    def __contains__(self, key: int) -> bool:
        return key in self._added_keys or key in self._packed

    def add(self, key: int, digests: tuple[str, ...]) -> None:
        """File ``key`` under its digests; the key must not be held."""
        self._added_keys[key] = digests
        for digest in digests:
            self._added.setdefault(digest, []).append(key)

    def remove(self, key: int) -> bool:
        """Forget ``key``; whether it was held."""
        digests = self._added_keys.pop(key, None)
        for digest in digests or ():
            holders = self._added[digest]
            holders.remove(key)
            if not holders:
                del self._added[digest]
        packed = key in self._packed
        self._packed.discard(key)
        return digests is not None or packed

    def keys(self, digest: str) -> list[int]:
        """The keys filed under ``digest``."""
        added = self._added.get(digest, [])
        wanted = digest.encode()
        if not len(self._digests) or len(wanted) > self._digests.dtype.itemsize:
            return list(added)
        start = int(np.searchsorted(self._digests, wanted, side="left"))
        end = int(np.searchsorted(self._digests, wanted, side="right"))
        packed = [key for key in self._keys[start:end].tolist() if key in self._packed]
        return packed + added

    def pack(self) -> None:
        """Move the keys added into the arrays (a build, once it has added them all)."""
        if not self._added:
            return
        kept = np.fromiter((key in self._packed for key in self._keys.tolist()), bool)
        pairs = [(digest.encode(), key) for digest, keys in self._added.items() for key in keys]
        digests = np.concatenate([self._digests[kept], np.array([d for d, _ in pairs], "S64")])
        keys = np.concatenate([self._keys[kept], np.array([k for _, k in pairs], np.int64)])
        order = np.argsort(digests, kind="stable")
        self._digests, self._keys = digests[order], keys[order]
        self._packed = KeySet(keys.tolist())
        self._added, self._added_keys = {}, {}


class _ColourTable:
    """Colour signatures by key, packed at the front of a growing matrix: a key added or
    removed costs one row, not a copy of the whole matrix."""

    def __init__(self) -> None:
        self._matrix = np.zeros((0, COLOUR_BINS**3), np.float32)
        self._keys: list[int] = []
        self._row: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: int) -> bool:
        return key in self._row

    def rows(self) -> np.ndarray:
        return self._matrix[: len(self._keys)]

    def key(self, row: int) -> int:
        return self._keys[row]

    def extend(self, keys: list[int], signatures: np.ndarray) -> None:
        for key in keys:
            self.remove(key)
        start, end = len(self._keys), len(self._keys) + len(keys)
        if end > self._matrix.shape[0]:
            grown = np.zeros(
                (max(end, 2 * self._matrix.shape[0], 1024), COLOUR_BINS**3), np.float32
            )
            grown[:start] = self._matrix[:start]
            self._matrix = grown
        self._matrix[start:end] = signatures
        self._keys.extend(keys)
        self._row.update({key: start + offset for offset, key in enumerate(keys)})

    def remove(self, key: int) -> None:
        """The last row moves into the freed one, so the rows stay packed."""
        row = self._row.pop(key, None)
        if row is None:
            return
        last = len(self._keys) - 1
        moved = self._keys.pop()
        if row != last:
            self._matrix[row] = self._matrix[last]
            self._keys[row] = moved
            self._row[moved] = row


def _inverted(fingerprint: Fingerprint) -> Fingerprint:
    """The fingerprint with every bit turned: what the negative of the picture hashes to,
    near enough for a candidate (each hash compares parts of the picture, and a negative
    reverses every comparison)."""
    turned = {name: f"{int(code, 16) ^ ((1 << 4 * len(code)) - 1):0{len(code)}x}"
              for name, code in fingerprint.hashes.items()}  # fmt: skip
    return Fingerprint(turned, fingerprint.pdq_quality)


def _turn_label(name: str) -> str:
    return next(label for turn, label, _ in TURNS if turn == name)


def _view_label(view: View) -> str:
    kind = view.name.rstrip("_0123456789")
    left, top, right, bottom = view.box
    return f"{VIEW_LABELS[kind]} ({(right - left) * (bottom - top):.0%} of the upload)"

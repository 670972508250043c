"""Local features: proof that an upload shows a banned picture, found point by point.

A perceptual hash summarises the whole picture, so it drifts when the picture is cropped,
turned a few degrees or pasted into a larger one. ORB keypoints do not: each describes a
small patch. ``verify`` pairs the banned picture's keypoints with the upload's
(``matched_pairs``) and asks RANSAC for one affine transform that carries many of them
onto the upload, then refits it on its own pairs (a homography, for a photo of a screen).

Points alone are weak evidence: two screenshots of one app agree on its toolbar, and
text, stripes or smooth pictures give too few distinctive points for a copy to reach any
safe count. So the points only say *where* the banned picture would lie, and its pixels
decide (``agreement``): a grey copy stored with the features is laid over the upload as
fitted, and the fine detail of the two must correlate over most of the picture. Pictures
with too few points to fit are laid over the upload edge to edge (``verify_whole``).

This runs only on a few candidates per upload (``hashes/detect.py``), never on the whole
blocklist.
"""

import dataclasses
import functools
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from hashes.index import distinct, pair_bits

FEATURE_SIDE = 640
_MIN_ORB_SIDE = 32
REFERENCE_FEATURES = 500
QUERY_FEATURES = 1500
REFERENCE_GRID = 3
SMALL_FEATURE_SIDE = 256
SMALL_FEATURES = 250
_PYRAMID_STEP = 1.2
# Features stored before the photometric check existed have no grey copy; for them the
# points alone decide: enough inliers, a high share of agreeing matches, and a hull over
# a fair part of the banned picture (not an app's toolbar). Figures: docs/calibration.md.
MIN_INLIERS = 20
MIN_INLIER_SHARE = 0.7
MIN_COVERAGE = 0.15
# Below STRONG_INLIERS, the stricter share applies.
STRONG_INLIERS = 40
WEAK_INLIER_SHARE = 0.8
# With the photometric check, a fit needs MIN_POINTS agreeing points to be looked at.
MIN_POINTS = 8
# The banned picture, as placed, must fill this share of the upload: a transform that
# shrinks it to a speck makes every point an "inlier".
MIN_PLACED = 0.08
_RATIO = 0.8
# Descriptors are compared when they share a 16-bit chunk (matched_pairs), unless more
# than _CROWDED upload descriptors hold it; one compared with nothing else must be within
# _LONE_MATCH bits.
_CROWDED = 8
_LONE_MATCH = 48
_MAX_STRETCH = 2.5
# A refit may move no corner of the banned picture, as placed, further than this share
# of its diagonal from where the first affine transform puts it.
_MAX_REFIT = 0.15
# The photometric check: the banned picture's grey copy (PIXELS_SIDE across, stored with
# its features) is split into a _CELLS x _CELLS grid; a cell counts where the upload
# covers nine tenths of it and the banned picture has detail there. At least MIN_OVERLAP
# of the banned picture must be inside the upload (crops up to 20% keep 64%), and at
# least MIN_AGREEING of at least MIN_CELLS cells must correlate at _CELL_NCC or more:
# copies reach it with a sticker or caption spoiling a few cells, innocent pairs stay far
# below it (docs/calibration.md). The detail is a band of wavelengths of a few pixels
# (_DETAIL_SIGMAS), coarse enough to survive resampling.
PIXELS_SIDE = 160
MIN_OVERLAP = 0.5
MIN_CELLS = 10
MIN_AGREEING = 0.75
_CELLS = 8
_CELL_NCC = 0.7
_DETAIL_SIGMAS = (1.0, 3.5)
_FLAT_ENERGY = 1.0  # mean squared detail, in grey levels, of a cell that has any
_MAX_SHIFT = 3.0  # pixels of the grey copy that a fit may be off by
_REPROJECTION = 0.006  # of the upload's longer side


@dataclass(frozen=True)
class LocalFeatures:
    points: np.ndarray  # (n, 2) float32, pixels of a copy FEATURE_SIDE on its longer side
    descriptors: np.ndarray  # (n, 32) uint8, ORB
    size: tuple[int, int]
    # The picture, at any scale of ``size``, for the photometric check: grey (h, w) for a
    # banned picture, RGB (h, w, 3) for an upload. None in features stored before the
    # check existed (``manage.py rehash`` adds it).
    pixels: np.ndarray | None = None
    # How many of the points each scale gave, largest first: a banned picture's
    # (reference_local_features); () for an upload's, or features stored before then.
    scales: tuple[int, ...] = ()
    # A banned picture's features as found on it mirrored, to file it under the words a
    # mirrored copy shows (reference_local_features); not stored with the features.
    mirrored: "LocalFeatures | None" = None

    @functools.cached_property
    def chunk_table(self) -> "_ChunkTable":
        """Its descriptors by their 16-bit chunks, made once for all the pictures these
        features are matched against (``matched_pairs``)."""
        return _ChunkTable.of(self.descriptors)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        arrays: dict[str, Any] = {}
        if self.pixels is not None:
            arrays["pixels"] = _shrink(self.pixels, PIXELS_SIDE)
        arrays.update(
            points=self.points.astype(np.float32),
            descriptors=self.descriptors,
            size=np.array(self.size),
        )
        if self.scales:
            arrays["scales"] = np.array(self.scales)
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "LocalFeatures":
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            size = stored["size"]
            pixels = stored["pixels"] if "pixels" in stored.files else None
            scales = tuple(stored["scales"].tolist()) if "scales" in stored.files else ()
            return cls(
                stored["points"],
                stored["descriptors"],
                (int(size[0]), int(size[1])),
                pixels,
                scales,
            )


@dataclass(frozen=True)
class Verification:
    inliers: int
    matches: int
    coverage: float  # share of the banned picture spanned by the agreeing points
    rotation: float  # degrees
    scale: float  # banned picture's size in the upload, relative to the upload
    box: tuple[float, float, float, float]  # where it lies in the upload, as fractions
    agreement: "Agreement | None" = None  # None: stored features without a grey copy

    def within(self, box: tuple[float, float, float, float]) -> "Verification":
        """The same result with its box placed in the picture that ``box`` was cut from."""
        left, top, right, bottom = box
        width, height = right - left, bottom - top
        inner = self.box
        placed = (
            left + inner[0] * width,
            top + inner[1] * height,
            left + inner[2] * width,
            top + inner[3] * height,
        )
        return dataclasses.replace(self, box=placed)

    def turned_back(self, turn: Image.Transpose) -> "Verification":
        """The same result found in the picture turned by ``turn``, with its box placed
        in the picture as it was."""
        before = _BEFORE[turn]
        left, top, right, bottom = self.box
        xs, ys = zip(*(before(x, y) for x in (left, right) for y in (top, bottom)), strict=True)
        return dataclasses.replace(self, box=(min(xs), min(ys), max(xs), max(ys)))

    def describe(self) -> str:
        pixels = ""
        if self.agreement is not None:
            cells = self.agreement.correlations
            agreeing = round(self.agreement.agreeing * len(cells))
            pixels = f"pixels agreeing in {agreeing} of {len(cells)} parts"
            if not self.inliers:
                return f"the whole picture, {pixels}"
            pixels = f", {pixels}"
        # Under half a degree is no turn: "turned -0.0°" says nothing.
        turned = f", turned {self.rotation:+.1f}°" if abs(self.rotation) >= 0.5 else ""
        return (
            f"{self.inliers} matching points ({self.coverage:.0%} of the banned image){pixels}"
            f"{turned}, filling {_visible_area(self.box):.0%} of the upload"
        )


# Where a point (x, y, as fractions) of a picture turned by each transpose lies in the
# picture before it was turned.
_BEFORE: dict[Image.Transpose, Callable[[float, float], tuple[float, float]]] = {
    Image.Transpose.FLIP_LEFT_RIGHT: lambda x, y: (1 - x, y),
    Image.Transpose.FLIP_TOP_BOTTOM: lambda x, y: (x, 1 - y),
    Image.Transpose.ROTATE_180: lambda x, y: (1 - x, 1 - y),
    Image.Transpose.ROTATE_90: lambda x, y: (1 - y, x),
    Image.Transpose.ROTATE_270: lambda x, y: (y, 1 - x),
    Image.Transpose.TRANSPOSE: lambda x, y: (y, x),
    Image.Transpose.TRANSVERSE: lambda x, y: (1 - y, 1 - x),
}


def _visible_area(box: tuple[float, float, float, float]) -> float:
    left, top, right, bottom = box
    return max(0.0, min(right, 1) - max(left, 0)) * max(0.0, min(bottom, 1) - max(top, 0))


def local_features(
    image: Image.Image,
    count: int = REFERENCE_FEATURES,
    side: int = FEATURE_SIDE,
    grid: int = REFERENCE_GRID,
    pixels_side: int = PIXELS_SIDE,
    colour: bool = False,
    shown: Image.Image | None = None,
) -> LocalFeatures:
    """ORB keypoints of ``image`` (any mode), on a copy at most ``side`` pixels across,
    and the picture at most ``pixels_side`` across for the photometric check: in grey, or
    in ``colour`` for an upload, whose colours may have been changed (``shown``: the
    picture in colour at any size, where ``image`` is grey).

    The strongest corners are taken per cell of a ``grid`` x ``grid`` split, not over the
    whole picture, so that every part has its share: a crop keeps keypoints of its own,
    and a small copy pasted beside busier pictures is not drowned out by them. Smooth
    pictures give few corners at ORB's usual contrast threshold, so a picture that yields
    under a fifth of ``count`` is searched again at a low one.
    """
    return _Detected.of(image, count, side, grid, pixels_side, colour, shown).features()


def reference_local_features(image: Image.Image) -> LocalFeatures:
    """The local features stored for a banned picture: those of ``local_features``, and
    SMALL_FEATURES more found on a copy SMALL_FEATURE_SIDE across, placed in the same
    pixels. A copy pasted at half size or less into a larger picture shows corners of
    that coarser scale, which ORB's pyramid, reaching only upward from the copy it is
    given, cannot find on the larger one. With them, as ``mirrored``, the same found on
    the picture mirrored."""
    large = _Detected.of(
        image, REFERENCE_FEATURES, FEATURE_SIDE, REFERENCE_GRID, PIXELS_SIDE, False
    )
    scales = [large.with_mirrored()]
    if max(large.size) >= SMALL_FEATURE_SIDE * _PYRAMID_STEP:
        side = SMALL_FEATURE_SIDE
        small = _Detected.of(image, SMALL_FEATURES, side, REFERENCE_GRID, side, False)
        scales.append(small.with_mirrored())
    as_is, mirrored = (_joined([both[turn] for both in scales]) for turn in (0, 1))
    return dataclasses.replace(as_is, mirrored=mirrored)


def _joined(scales: list[LocalFeatures]) -> LocalFeatures:
    """The features of each scale of a picture, largest first, as one, their points
    placed in the pixels of the first."""
    first = scales[0]
    size = np.array(first.size, np.float32)
    return dataclasses.replace(
        first,
        points=np.concatenate(
            [part.points * (size / np.array(part.size, np.float32)) for part in scales]
        ),
        descriptors=np.concatenate([part.descriptors for part in scales]),
        scales=tuple(len(part.points) for part in scales),
    )


def upload_features(
    image: Image.Image,
    count: int,
    side: int,
    pixels_side: int,
    shown: Image.Image | None = None,
) -> tuple[LocalFeatures, Callable[[], LocalFeatures]]:
    """The local features of an upload (``local_features`` in colour), and what makes
    those of the upload mirrored when they are needed: the same corners, whose
    descriptors are computed again on the mirrored copy at a fraction of the cost of
    finding them there. ``shown``: a copy of the upload at most ``pixels_side`` across,
    to take its pixels from."""
    detected = _Detected.of(image, count, side, REFERENCE_GRID, pixels_side, True, shown)
    return detected.features(), detected.mirrored


@dataclass(frozen=True)
class _Detected:
    """ORB keypoints found on a grey copy of a picture, with what they are packed with."""

    grey: np.ndarray
    kept: np.ndarray  # the copy for the photometric check
    keypoints: Sequence[cv2.KeyPoint]
    descriptors: np.ndarray | None
    orb: Any

    @property
    def size(self) -> tuple[int, int]:
        return (self.grey.shape[1], self.grey.shape[0])

    @classmethod
    def of(
        cls,
        image: Image.Image,
        count: int,
        side: int,
        grid: int,
        pixels_side: int,
        colour: bool,
        shown: Image.Image | None = None,
    ) -> "_Detected":
        grey = image if image.mode == "L" else image.convert("L")
        scale = side / max(grey.size)
        if scale < 1:
            size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
            grey = grey.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        pixels = np.asarray(grey)
        if colour:
            if shown is None:
                shown = image.convert("RGB")
                if shown.size != grey.size:
                    shown = shown.resize(grey.size, Image.Resampling.BILINEAR, reducing_gap=2.0)
            kept = _shrink(np.asarray(shown), pixels_side)
        else:
            kept = _shrink(pixels, pixels_side)
        keypoints: Sequence[cv2.KeyPoint] = ()
        orb = None
        # ORB's image pyramid cannot shrink a strip a few pixels thin (60000x8, say): such
        # a picture has no corners to find.
        thresholds = (20, 5) if min(pixels.shape) >= _MIN_ORB_SIDE else ()
        for threshold in thresholds:
            orb = cv2.ORB.create(
                nfeatures=count * 4,
                scaleFactor=_PYRAMID_STEP,
                nlevels=8,
                edgeThreshold=15,
                fastThreshold=threshold,
            )
            keypoints = _spread(orb.detect(pixels, None), pixels.shape, count, grid)
            if len(keypoints) >= count // 5:
                break
        descriptors = None
        if keypoints:
            keypoints, descriptors = orb.compute(pixels, keypoints)  # type: ignore[union-attr]
        return cls(pixels, kept, keypoints, descriptors, orb)

    def features(self) -> LocalFeatures:
        return _packed(self.keypoints, self.descriptors, self.size, self.kept)

    def with_mirrored(self) -> tuple[LocalFeatures, LocalFeatures]:
        """The features, and those of the copy mirrored left to right."""
        return self.features(), self.mirrored()

    def mirrored(self) -> LocalFeatures:
        """The features of the copy mirrored left to right. ORB's corners and scales are
        symmetric, so the same keypoints, mirrored with their orientation, are the ones a
        search of the mirrored copy finds; only their descriptors differ. The keypoints
        are mirrored in place, their last use (made anew, they cost 0.7 ms an upload):
        ``features`` must have been packed first, and this is called once."""
        flipped = cv2.flip(self.kept, 1)
        if self.descriptors is None or self.orb is None:
            return _packed((), None, self.size, flipped)
        width = self.grey.shape[1]
        for keypoint in self.keypoints:
            left, top = keypoint.pt
            keypoint.pt = (width - 1 - left, top)
            keypoint.angle = (180 - keypoint.angle) % 360
        keypoints, descriptors = self.orb.compute(cv2.flip(self.grey, 1), self.keypoints)
        return _packed(keypoints, descriptors, self.size, flipped)


def _packed(
    keypoints: Sequence[cv2.KeyPoint],
    descriptors: np.ndarray | None,
    size: tuple[int, int],
    kept: np.ndarray,
) -> LocalFeatures:
    if descriptors is None or not len(keypoints):
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8), size, kept)
    points = np.asarray(cv2.KeyPoint.convert(keypoints), np.float32)
    return LocalFeatures(points, descriptors, size, kept)


def _shrink(pixels: np.ndarray, side: int) -> np.ndarray:
    """A grey array scaled down (by area) so that its longer side is at most ``side``."""
    height, width = pixels.shape[:2]
    scale = side / max(height, width)
    if scale >= 1:
        return pixels
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def _spread(
    keypoints: Sequence[cv2.KeyPoint], shape: tuple[int, ...], count: int, grid: int
) -> list[cv2.KeyPoint]:
    """The strongest ``count / grid**2`` keypoints of each cell, then the strongest others.

    Cells are taken in the order of their strongest keypoint, and ties keep the
    detector's order, so that the same keypoints come back in the same order each time.
    """
    if not keypoints:
        return []
    height, width = shape[:2]
    # ORB's responses are 32-bit: sorted in that width, at two thirds of the cost.
    strength = np.fromiter(
        (keypoint.response for keypoint in keypoints), np.float32, len(keypoints)
    )
    points = np.asarray(cv2.KeyPoint.convert(keypoints), np.float64)
    strongest = np.argsort(-strength, kind="stable")
    columns = np.minimum(grid - 1, (points[strongest, 0] * grid / width).astype(int))
    rows = np.minimum(grid - 1, (points[strongest, 1] * grid / height).astype(int))
    cells = rows * grid + columns
    size = len(cells)
    # Each keypoint's rank within its cell, and each cell's place in line (where its
    # strongest keypoint comes), counted down a column per cell.
    member = cells[:, None] == np.arange(grid * grid)
    seen = np.cumsum(member, axis=0)
    rank = seen[np.arange(size), cells] - 1
    present = np.flatnonzero(seen[-1])
    place = np.zeros(grid * grid, dtype=np.int64)
    place[present[np.argsort(member[:, present].argmax(axis=0))]] = np.arange(len(present))
    share = max(1, count // (grid * grid))
    kept = rank < share
    chosen = np.flatnonzero(kept)
    chosen = chosen[np.argsort(place[cells[chosen]] * size + rank[chosen])]
    # The others by strength, keypoints as strong as each other by their cell's place.
    rest = np.flatnonzero(~kept)
    ordered = strength[strongest]
    tier = np.cumsum(np.concatenate([[0], ordered[1:] != ordered[:-1]]))
    rest = rest[np.argsort((tier[rest] * grid * grid + place[cells[rest]]) * size + rank[rest])]
    picked = np.concatenate([chosen, rest[: max(0, count - len(chosen))]])
    return [keypoints[index] for index in strongest[picked].tolist()]


@dataclass(frozen=True)
class PointFit:
    transform: np.ndarray  # 2x3 affine, banned feature pixels to upload feature pixels
    inliers: int
    matches: int
    coverage: float
    # The transforms to lay the banned picture over the upload with, closest first:
    # refits of ``transform`` (3x3) on its own pairs, then ``transform`` itself.
    overlays: tuple[np.ndarray, ...] = ()


def matched_pairs(banned: LocalFeatures, upload: LocalFeatures) -> tuple[np.ndarray, np.ndarray]:
    """(banned row, upload row) for each banned descriptor whose nearest upload descriptor
    is clearly nearer than the next (Lowe's ratio test), without comparing every pair.

    Only upload descriptors that equal the banned one in one of its sixteen 16-bit chunks
    are compared (multi-index hashing): any within 15 bits of it share a chunk, and a
    corner's descriptor in a resized, recompressed or turned copy, 20 to 50 bits off,
    most often does. A chunk held by more than _CROWDED upload descriptors (a flat patch,
    a stripe) is not looked up. Where a descriptor has a single neighbour this way, the
    next is beyond that reach, and the neighbour must be within _LONE_MATCH bits.
    """
    nothing = np.zeros(0, np.int64)
    mine, theirs = banned.chunk_table, upload.chunk_table
    if not len(mine.chunks) or not len(theirs.chunks):
        return nothing, nothing
    # Every chunk of every banned descriptor looked up at once: both sides are sorted.
    at = np.minimum(np.searchsorted(theirs.distinct, mine.chunks), len(theirs.distinct) - 1)
    shared = theirs.distinct[at] == mine.chunks
    at, rows = at[shared], mine.rows[shared]
    sizes = theirs.counts[at]
    looked = sizes <= _CROWDED
    sizes, first, rows = sizes[looked], theirs.starts[at[looked]], rows[looked]
    at = np.repeat(first - np.cumsum(sizes) + sizes, sizes) + np.arange(sizes.sum())
    width = len(upload.descriptors)
    pairs = distinct(np.repeat(rows, sizes).astype(np.int64) * width + theirs.rows[at])
    if not len(pairs):
        return nothing, nothing
    query, train = np.divmod(pairs, width)
    distance = pair_bits(
        banned.descriptors.view(np.uint64), query, upload.descriptors.view(np.uint64), train
    )
    ranked = np.argsort(query * 257 + distance, kind="stable")
    query, train, distance = query[ranked], train[ranked], distance[ranked]
    best = np.flatnonzero(np.r_[True, query[1:] != query[:-1]])
    alone = np.diff(np.r_[best, len(query)]) == 1
    runner_up = np.where(alone, 256, distance[np.minimum(best + 1, len(query) - 1)])
    good = (distance[best] < _RATIO * runner_up) & (~alone | (distance[best] <= _LONE_MATCH))
    return query[best[good]], train[best[good]]


@dataclass(frozen=True)
class _ChunkTable:
    """Descriptors by their sixteen 16-bit chunks, as keys (each chunk's number above its
    16 bits) in sorted order: ``chunks`` and the descriptor ``rows`` they come from, and
    the ``distinct`` keys with where each ``starts`` among them and how many (``counts``)."""

    chunks: np.ndarray
    rows: np.ndarray
    distinct: np.ndarray
    starts: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, descriptors: np.ndarray) -> "_ChunkTable":
        halves = np.ascontiguousarray(descriptors).view(np.uint16).T.astype(np.uint32)
        keys = (halves | (np.arange(16, dtype=np.uint32)[:, None] << np.uint32(16))).ravel()
        order = np.argsort(keys, kind="stable")
        chunks = keys[order]
        distinct, starts, counts = np.unique(chunks, return_index=True, return_counts=True)
        rows = order % max(1, len(descriptors))
        return cls(chunks, rows, distinct, starts, counts)


Pairing = Callable[[LocalFeatures, LocalFeatures], tuple[np.ndarray, np.ndarray]]


def fit_points(
    banned: LocalFeatures, upload: LocalFeatures, pairs: Pairing = matched_pairs
) -> PointFit | None:
    """The affine transform most matched keypoints agree on, with its support; ``pairs``
    pairs the descriptors (``matched_pairs``; a benchmark passes others)."""
    if len(banned.descriptors) < MIN_POINTS or len(upload.descriptors) < MIN_POINTS:
        return None
    query, train = pairs(banned, upload)
    if len(query) < MIN_POINTS:
        return None
    source = banned.points[query]
    target = upload.points[train]
    reach = max(2.0, _REPROJECTION * max(upload.size))
    transform, inliers = _consensus(source, target, reach)
    if transform is None or inliers.sum() < MIN_POINTS:
        return None
    points = source[inliers]
    coverage = cv2.contourArea(cv2.convexHull(points)) / (banned.size[0] * banned.size[1])
    overlays = (*_refits(source, target, reach, transform, banned.size), _square(transform))
    return PointFit(transform, int(inliers.sum()), len(query), float(coverage), overlays)


def _refits(
    source: np.ndarray,
    target: np.ndarray,
    reach: float,
    affine: np.ndarray,
    size: tuple[int, int],
) -> list[np.ndarray]:
    """The affine transform fitted again on the pairs it carries closest, at half its
    reach, as a homography and as an affine transform; those that place the banned
    picture as a convex shape near where it does.

    A photo of a screen narrows one edge (keystone), which no affine transform follows;
    and among many chance pairs, the first consensus can be a transform a little off,
    enough for the pixels to disagree, most of all in a small upload whose keypoints lie
    a pixel or two apart (locally optimised RANSAC).
    """
    carried = source @ affine[:, :2].T + affine[:, 2]
    close = np.linalg.norm(carried - target, axis=1) < reach / 2
    if close.sum() < MIN_POINTS:
        return []
    source, target = source[close], target[close]
    homography, mask = cv2.findHomography(
        source, target, cv2.RANSAC, reach / 2, maxIters=2000, confidence=0.995
    )
    refitted, kept = _consensus(source, target, reach / 2)
    fits = [
        (homography, 0 if mask is None else int(mask.sum())),
        (None if refitted is None else _square(refitted), int(kept.sum())),
    ]
    corners = _corners(size)
    flat = cv2.perspectiveTransform(corners[None], _square(affine))[0]
    diagonal = float(np.linalg.norm(flat[2] - flat[0]))
    found = []
    for fitted, carried_pairs in fits:
        if fitted is None or carried_pairs < MIN_POINTS:
            continue
        placed = cv2.perspectiveTransform(corners[None], fitted)[0]
        moved = float(np.linalg.norm(placed - flat, axis=1).max())
        if cv2.isContourConvex(placed.astype(np.float32)) and moved <= _MAX_REFIT * diagonal:
            found.append(fitted)
    return found


def _square(transform: np.ndarray) -> np.ndarray:
    """A transform as a 3x3 matrix: a 2x3 affine one gets its last row."""
    if transform.shape == (3, 3):
        return transform
    return np.vstack([transform, [0.0, 0.0, 1.0]])


def _placed(
    transform: np.ndarray, size: tuple[int, int], upload: tuple[int, int]
) -> tuple[float, float, float, float]:
    """Where ``transform`` places a picture of ``size`` in the upload, as fractions."""
    placed = cv2.perspectiveTransform(_corners(size)[None], _square(transform))[0]
    width, height = upload
    left, top = placed.min(axis=0)
    right, bottom = placed.max(axis=0)
    return (float(left / width), float(top / height), float(right / width), float(bottom / height))


def _corners(size: tuple[int, int]) -> np.ndarray:
    width, height = size
    return np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)


def _consensus(
    source: np.ndarray, target: np.ndarray, reach: float
) -> tuple[np.ndarray | None, np.ndarray]:
    """The affine transform RANSAC finds, and which pairs it carries within ``reach``."""
    transform, mask = cv2.estimateAffine2D(
        source,
        target,
        method=cv2.RANSAC,
        ransacReprojThreshold=reach,
        maxIters=4000,
        confidence=0.995,
    )
    if transform is None:
        return None, np.zeros(len(source), bool)
    return transform, mask.ravel().astype(bool)


@dataclass(frozen=True)
class Agreement:
    """How the banned picture's pixels compare with the upload's where the fit puts them."""

    overlap: float  # share of the banned picture that lies inside the upload
    # Per cell of the banned picture with detail of its own, inside the upload: how its
    # detail correlates with the upload's there (-1 to 1).
    correlations: tuple[float, ...]

    def convinces(self, min_agreeing: float = MIN_AGREEING) -> bool:
        """Whether the banned picture, as placed, is what the upload shows."""
        return (
            self.overlap >= MIN_OVERLAP
            and len(self.correlations) >= MIN_CELLS
            and self.agreeing >= min_agreeing
        )

    @property
    def agreeing(self) -> float:
        """The share of cells that agree."""
        if not self.correlations:
            return 0.0
        return sum(value >= _CELL_NCC for value in self.correlations) / len(self.correlations)


def agreement(banned: LocalFeatures, upload: LocalFeatures, transform: np.ndarray) -> Agreement:
    """Compare the pictures pixel by pixel under ``transform`` (banned to upload points:
    2x3 affine or 3x3 homography).

    The upload is resampled into the banned picture's grey copy, both are reduced to
    their detail (a difference of Gaussians, so that brightness, contrast and smooth
    gradients count for nothing), and the detail is correlated cell by cell on a grid.
    A copy agrees nearly everywhere, a sticker or caption aside; two pictures that share
    only a toolbar, a logo or a few look-alike corners agree in a few cells at most.
    """
    assert banned.pixels is not None and upload.pixels is not None
    reference = banned.pixels.astype(np.float32)
    height, width = reference.shape
    to_reference = np.diag([banned.size[0] / width, banned.size[1] / height, 1.0])
    to_upload = np.diag([upload.pixels.shape[1] / upload.size[0],
                         upload.pixels.shape[0] / upload.size[1], 1.0])  # fmt: skip
    mapping = to_upload @ _square(transform) @ to_reference  # reference pixels to upload pixels
    source = upload.pixels
    # How much the mapping shrinks the upload, around the middle of the banned picture.
    middle = np.array([[[width / 2, height / 2], [width / 2 + 1, height / 2],
                        [width / 2, height / 2 + 1]]])  # fmt: skip
    centre, right, below = cv2.perspectiveTransform(middle, mapping)[0]
    (a, b), (c, d) = right - centre, below - centre
    scale = math.sqrt(abs(float(a * d - b * c)))
    if scale > 1.5:
        # Shrink the upload first so that warping it does not alias.
        source = cv2.resize(
            source,
            (max(1, round(source.shape[1] / scale)), max(1, round(source.shape[0] / scale))),
            interpolation=cv2.INTER_AREA,
        )
        mapping = np.diag([source.shape[1] / upload.pixels.shape[1],
                           source.shape[0] / upload.pixels.shape[0], 1.0]) @ mapping  # fmt: skip
    flags = cv2.WARP_INVERSE_MAP
    # Reflected beyond the upload's edges, so that its edge makes no detail of its own.
    warped = cv2.warpPerspective(
        source.astype(np.float32),
        mapping,
        (width, height),
        flags=flags | cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    inside = cv2.warpPerspective(
        np.ones(source.shape[:2], np.uint8),
        mapping,
        (width, height),
        flags=flags | cv2.INTER_NEAREST,
    )
    inside = cv2.erode(inside, np.ones((5, 5), np.uint8)).astype(bool)
    overlap = float(inside.mean())
    detail_a = _detail(reference)
    detail_b = _detail(warped)
    # Sums over each cell of the grid, all cells at once.
    rows = np.linspace(0, height, _CELLS + 1).astype(int)[:-1]
    columns = np.linspace(0, width, _CELLS + 1).astype(int)[:-1]

    def cell_sums(values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(np.add.reduceat(values, rows, axis=0), columns, axis=1)

    cells = cell_sums(np.ones(inside.shape, np.float32))

    def usable(inside: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The mask's weights, the banned picture's detail energy per cell, and which
        cells count: mostly inside the upload, with detail of their own."""
        weight = inside.astype(np.float32)
        count = cell_sums(weight)
        energy = cell_sums(detail_a * detail_a * weight)
        return weight, energy, (count >= 0.9 * cells) & (energy >= _FLAT_ENERGY * count)

    weight, energy_a, used = usable(inside)
    if detail_b.ndim == 3:
        detail_b = detail_b @ _channel_mix(detail_a, detail_b, weight, used, cell_sums)
    if overlap > 0:
        detail_b, inside = _aligned(detail_a, detail_b, inside)
        weight, energy_a, used = usable(inside)
    product = cell_sums(detail_a * detail_b * weight)
    energy_b = cell_sums(detail_b * detail_b * weight)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(energy_b > 0, product / np.sqrt(energy_a * energy_b), 0.0)
    correlations = [float(value) for value in values[used]]
    return Agreement(overlap, tuple(correlations))


def _channel_mix(
    detail_a: np.ndarray,
    detail_b: np.ndarray,
    weight: np.ndarray,
    used: np.ndarray,
    cell_sums: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """The mix of the upload's colour channels that best gives the banned picture's grey.

    Hue shifts, channel swaps and other recolourings are undone by it; three weights over
    thousands of pixels lend a different picture no agreement. The mix is fitted in each
    cell by least squares and the median of the cells' mixes is taken, so that a sticker
    or caption, whose strong edges would dominate one fit over the whole picture, moves
    it only as much as the few cells it covers.
    """
    channels = range(3)
    gram = np.stack(
        [
            np.stack(
                [cell_sums(detail_b[..., i] * detail_b[..., j] * weight) for j in channels], -1
            )
            for i in channels
        ],
        -2,
    )[used]
    target = np.stack([cell_sums(detail_b[..., i] * detail_a * weight) for i in channels], -1)[used]
    if not len(gram):
        return np.full(3, 1 / 3, np.float32)
    # A little ridge keeps grey pictures, whose channels are all alike, well posed.
    ridge = (1e-3 * np.trace(gram, axis1=1, axis2=2) + 1e-6)[:, None, None] * np.eye(3)
    mixes = np.linalg.solve(gram + ridge, target[..., None])[..., 0]
    return np.median(mixes, axis=0).astype(np.float32)


def _aligned(
    reference: np.ndarray, warped: np.ndarray, inside: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``warped`` and its mask moved by the shift that best lines it up with ``reference``.

    The fit's points are found on copies of other sizes, so the warp may be off by a
    pixel or two at this scale, which is enough to decorrelate fine detail.
    """
    window = inside.astype(np.float32)
    (dx, dy), _ = cv2.phaseCorrelate(reference * window, warped * window)
    if abs(dx) > _MAX_SHIFT or abs(dy) > _MAX_SHIFT or (abs(dx) < 0.25 and abs(dy) < 0.25):
        return warped, inside
    shift = np.array([[1, 0, -dx], [0, 1, -dy]], dtype=np.float32)
    size = (warped.shape[1], warped.shape[0])
    moved = cv2.warpAffine(warped, shift, size, borderMode=cv2.BORDER_REFLECT_101)
    kept = cv2.warpAffine(inside.astype(np.uint8), shift, size, flags=cv2.INTER_NEAREST)
    return moved, kept.astype(bool)


def _detail(pixels: np.ndarray) -> np.ndarray:
    fine, coarse = _DETAIL_SIGMAS
    return cv2.GaussianBlur(pixels, (0, 0), fine) - cv2.GaussianBlur(pixels, (0, 0), coarse)


def verify(
    banned: LocalFeatures,
    upload: LocalFeatures,
    min_agreeing: float = MIN_AGREEING,
    pairs: Pairing = matched_pairs,
) -> Verification | None:
    """How ``upload`` shows ``banned``, or None when the points and pixels do not agree.

    ``min_agreeing``: the share of the banned picture's parts whose pixels must agree.
    """
    fit = fit_points(banned, upload, pairs)
    if fit is None:
        return None
    transform = fit.transform
    linear = transform[:, :2]
    if np.linalg.det(linear) <= 0:
        return None  # a mirror image: the hash stage's turned variants cover those
    stretch = np.linalg.svd(linear, compute_uv=False)
    if stretch[1] <= 0 or stretch[0] / stretch[1] > _MAX_STRETCH:
        return None
    box = _placed(transform, banned.size, upload.size)
    if _visible_area(box) < MIN_PLACED:
        return None
    seen = None
    if banned.pixels is None or upload.pixels is None:
        # Stored before the photometric check: the points alone must convince.
        convinced = (
            fit.inliers >= MIN_INLIERS
            and fit.inliers >= MIN_INLIER_SHARE * fit.matches
            and fit.coverage >= MIN_COVERAGE
            and (fit.inliers >= STRONG_INLIERS or fit.inliers >= WEAK_INLIER_SHARE * fit.matches)
        )
    else:
        convinced = False
        for overlay in fit.overlays:
            seen = agreement(banned, upload, overlay)
            convinced = seen.convinces(min_agreeing)
            if convinced:
                box = _placed(overlay, banned.size, upload.size)
                break
    if not convinced:
        return None
    return Verification(
        inliers=fit.inliers,
        matches=fit.matches,
        coverage=fit.coverage,
        rotation=math.degrees(math.atan2(linear[1, 0], linear[0, 0])),
        scale=float(math.sqrt(abs(np.linalg.det(linear))) * max(banned.size) / max(upload.size)),
        box=box,
        agreement=seen,
    )


def verify_whole(
    banned: LocalFeatures, upload: LocalFeatures, min_agreeing: float = MIN_AGREEING
) -> Verification | None:
    """Whether ``upload`` is the whole banned picture, compared pixel by pixel.

    For pictures with too few distinctive points to fit a geometry (smooth, dark or
    repetitive ones): the upload is laid over the banned picture edge to edge, stretched
    to fit, and only the photometric check decides.
    """
    if banned.pixels is None or upload.pixels is None:
        return None
    stretch = (upload.size[0] / banned.size[0]) / (upload.size[1] / banned.size[1])
    if not 1 / _MAX_STRETCH <= stretch <= _MAX_STRETCH:
        return None
    scale = np.array(
        [[upload.size[0] / banned.size[0], 0, 0], [0, upload.size[1] / banned.size[1], 0]]
    )
    seen = agreement(banned, upload, scale)
    if not seen.convinces(min_agreeing):
        return None
    return Verification(
        inliers=0,
        matches=0,
        coverage=1.0,
        rotation=0.0,
        scale=1.0,
        box=(0.0, 0.0, 1.0, 1.0),
        agreement=seen,
    )

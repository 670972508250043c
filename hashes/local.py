"""Local features: proof that an upload shows a banned picture, found point by point.

A perceptual hash summarises the whole picture, so it drifts when the picture is cropped,
turned a few degrees or pasted into a larger one. ORB keypoints do not: each describes a
small patch. ``verify`` matches the banned picture's keypoints to the upload's and asks
RANSAC for one affine transform that carries many of them onto the upload. Two different
pictures share a few look-alike patches by chance, but not a dozen that agree on a single
geometry, spread over a good part of the banned picture.

This runs only on a few candidates per upload (``hashes/detect.py``), never on the whole
blocklist.
"""

import dataclasses
import io
import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

FEATURE_SIDE = 640
REFERENCE_FEATURES = 500
QUERY_FEATURES = 1500
REFERENCE_GRID = 3
QUERY_GRID = 4
# Evidence needed, calibrated with the evaluation harness on 1,396 innocent images and
# their edits against 32 banned ones: chance agreements between different pictures had
# under 25 inliers, or a low share of agreeing matches, or a tiny hull; two shots of one
# scene agree at a share of 0.55 to 0.65. Copies of real photos agree with 50 to 400 inliers
# at shares above 0.8. Then 2,549 innocent images against 120 banned ones: screenshots of
# one app agreed on its toolbar alone, with up to 110 inliers over 5 to 7% of the banned
# picture, so the inliers must spread over at least 15% of it.
MIN_INLIERS = 20
MIN_INLIER_SHARE = 0.7
MIN_COVERAGE = 0.15
# Below STRONG_INLIERS, the stricter share applies.
STRONG_INLIERS = 40
WEAK_INLIER_SHARE = 0.8
# The banned picture, as placed, must fill this share of the upload: a transform that
# shrinks it to a speck makes every point an "inlier".
MIN_PLACED = 0.08
_RATIO = 0.8
_REPROJECTION = 0.006  # of the upload's longer side


@dataclass(frozen=True)
class LocalFeatures:
    points: np.ndarray  # (n, 2) float32, pixels of a copy FEATURE_SIDE on its longer side
    descriptors: np.ndarray  # (n, 32) uint8, ORB
    size: tuple[int, int]

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            points=self.points.astype(np.float32),
            descriptors=self.descriptors,
            size=np.array(self.size),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "LocalFeatures":
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            size = stored["size"]
            return cls(stored["points"], stored["descriptors"], (int(size[0]), int(size[1])))


@dataclass(frozen=True)
class Verification:
    inliers: int
    matches: int
    coverage: float  # share of the banned picture spanned by the agreeing points
    rotation: float  # degrees
    scale: float  # banned picture's size in the upload, relative to the upload
    box: tuple[float, float, float, float]  # where it lies in the upload, as fractions

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

    def describe(self) -> str:
        return (
            f"{self.inliers} matching points ({self.coverage:.0%} of the banned image), "
            f"turned {self.rotation:+.1f}°, filling {_visible_area(self.box):.0%} of the upload"
        )


def _visible_area(box: tuple[float, float, float, float]) -> float:
    left, top, right, bottom = box
    return max(0.0, min(right, 1) - max(left, 0)) * max(0.0, min(bottom, 1) - max(top, 0))


def local_features(
    image: Image.Image,
    count: int = REFERENCE_FEATURES,
    side: int = FEATURE_SIDE,
    grid: int = REFERENCE_GRID,
) -> LocalFeatures:
    """ORB keypoints of ``image`` (any mode), on a copy at most ``side`` pixels across.

    The strongest corners are taken per cell of a ``grid`` x ``grid`` split, not over the
    whole picture, so that every part has its share: a crop keeps keypoints of its own,
    and a small copy pasted beside busier pictures is not drowned out by them. Smooth
    pictures give few corners at ORB's usual contrast threshold, so a picture that yields
    under a fifth of ``count`` is searched again at a low one.
    """
    grey = image.convert("L")
    scale = side / max(grey.size)
    if scale < 1:
        size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
        grey = grey.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    pixels = np.asarray(grey)
    keypoints: list[cv2.KeyPoint] = []
    for threshold in (20, 5):
        orb = cv2.ORB_create(
            nfeatures=count * 4,
            scaleFactor=1.2,
            nlevels=8,
            edgeThreshold=15,
            fastThreshold=threshold,
        )
        keypoints = _spread(orb.detect(pixels, None), pixels.shape, count, grid)
        if len(keypoints) >= count // 5:
            break
    descriptors = None
    if keypoints:
        keypoints, descriptors = orb.compute(pixels, keypoints)
    if descriptors is None or not len(keypoints):
        return LocalFeatures(
            np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8), (grey.width, grey.height)
        )
    points = np.array([keypoint.pt for keypoint in keypoints], dtype=np.float32)
    return LocalFeatures(points, descriptors, (grey.width, grey.height))


def _spread(
    keypoints: "tuple[cv2.KeyPoint, ...]", shape: tuple[int, ...], count: int, grid: int
) -> list[cv2.KeyPoint]:
    """The strongest ``count / grid**2`` keypoints of each cell, then the strongest others."""
    height, width = shape[:2]
    cells: dict[tuple[int, int], list[cv2.KeyPoint]] = {}
    for keypoint in sorted(keypoints, key=lambda k: -k.response):
        x, y = keypoint.pt
        cell = (min(grid - 1, int(x * grid / width)), min(grid - 1, int(y * grid / height)))
        cells.setdefault(cell, []).append(keypoint)
    share = max(1, count // (grid * grid))
    chosen = [keypoint for found in cells.values() for keypoint in found[:share]]
    rest = sorted(
        (keypoint for found in cells.values() for keypoint in found[share:]),
        key=lambda k: -k.response,
    )
    return chosen + rest[: max(0, count - len(chosen))]


def verify(banned: LocalFeatures, upload: LocalFeatures) -> Verification | None:
    """How ``upload`` shows ``banned``, or None when the points do not agree enough."""
    if len(banned.descriptors) < MIN_INLIERS or len(upload.descriptors) < MIN_INLIERS:
        return None
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    pairs = matcher.knnMatch(banned.descriptors, upload.descriptors, k=2)
    good = [
        pair[0] for pair in pairs if len(pair) == 2 and pair[0].distance < _RATIO * pair[1].distance
    ]
    if len(good) < MIN_INLIERS:
        return None
    source = banned.points[[match.queryIdx for match in good]]
    target = upload.points[[match.trainIdx for match in good]]
    transform, mask = cv2.estimateAffine2D(
        source,
        target,
        method=cv2.RANSAC,
        ransacReprojThreshold=max(2.0, _REPROJECTION * max(upload.size)),
        maxIters=2000,
        confidence=0.995,
    )
    if transform is None:
        return None
    inliers = int(mask.sum())
    if inliers < MIN_INLIERS or inliers < MIN_INLIER_SHARE * len(good):
        return None
    linear = transform[:, :2]
    if np.linalg.det(linear) <= 0:
        return None  # a mirror image: the hash stage's turned variants cover those
    stretch = np.linalg.svd(linear, compute_uv=False)
    if stretch[1] <= 0 or stretch[0] / stretch[1] > 2.5:
        return None
    points = source[mask.ravel().astype(bool)]
    coverage = cv2.contourArea(cv2.convexHull(points)) / (banned.size[0] * banned.size[1])
    if coverage < MIN_COVERAGE:
        return None
    if inliers < STRONG_INLIERS and inliers < WEAK_INLIER_SHARE * len(good):
        return None
    corners = np.array(
        [[0, 0], [banned.size[0], 0], [banned.size[0], banned.size[1]], [0, banned.size[1]]],
        dtype=np.float64,
    )
    placed = corners @ linear.T + transform[:, 2]
    width, height = upload.size
    box = (
        float(placed[:, 0].min() / width),
        float(placed[:, 1].min() / height),
        float(placed[:, 0].max() / width),
        float(placed[:, 1].max() / height),
    )
    if _visible_area(box) < MIN_PLACED:
        return None
    return Verification(
        inliers=inliers,
        matches=len(good),
        coverage=float(coverage),
        rotation=math.degrees(math.atan2(linear[1, 0], linear[0, 0])),
        scale=float(math.sqrt(abs(np.linalg.det(linear))) * max(banned.size) / max(upload.size)),
        box=box,
    )

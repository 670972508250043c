"""The parts of a picture worth hashing on their own, found without knowing what is banned.

An edited re-upload often holds the banned picture inside something else: a border or
letterbox bars, a caption bar, an app window, a collage. Hashing the whole file hashes that
frame too. ``views`` finds the rectangles that may be the picture itself:

- ``trim``: uniform borders and letterbox bars cut away from each side, and
  ``trim_caption`` the same through caption bars (uniform margins around lines of text);
- ``panel``: rectangles split off by seams, straight edges that cross a whole panel from
  side to side (the joins of a collage) or by runs of background colour, recursively;
- ``inset``: rectangles bounded by straight edges inside the picture, some of their sides
  perhaps on its own edges: another picture pasted in a corner or the middle of one.

All of it runs on a small working copy (``WORK_SIDE`` pixels on the longer side); boxes
are returned as fractions of the frame so they can be cut from any size of it.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

WORK_SIDE = 512
# A border row or column: this share of its pixels within _TOLERANCE of the border colour.
_BORDER_SHARE = 0.97
_CAPTION_SHARE = 0.25
_TOLERANCE = 14
# A seam: a step of at least _STEP grey levels between neighbouring pixels along this share
# of the panel's length, and much more often than on the lines around it.
_STEP = 14
_SEAM_SHARE = 0.6
# Panels smaller than this share of the frame on either side are left out.
_MIN_PANEL = 0.22
_MAX_VIEWS = 12
_BLOCK = 24
# An inset's edge: a step of _STEP grey levels, or of _FAINT_STEP where it is at least twice
# the steps two pixels either side (a cut between two smooth pictures); over a window of
# _WINDOW pixels, most of them. A line whose longest such run is _MIN_RUN of the picture
# may be a side; a rectangle is an inset when each side inside the picture is such an edge
# along _INSET_COVER of its length.
_FAINT_STEP = 4
_WINDOW = 9
_MIN_RUN = 0.12
_LINES = 12
_INSET_COVER = 0.6
_MAX_INSETS = 2


@dataclass(frozen=True)
class View:
    name: str
    box: tuple[float, float, float, float]  # left, top, right, bottom as fractions


def working_copy(frame: Image.Image, side: int = WORK_SIDE) -> Image.Image:
    """``frame`` (a decoded one) scaled down so that its longer side is at most ``side``
    pixels, to the size ``Image.thumbnail`` would make it. Resized from the frame itself,
    not from a copy made for ``thumbnail``: a copy's fresh pixels cost an 800-px frame
    1.5 ms more to resize."""
    size = _thumbnail_size(frame.size, side)
    if size == frame.size:
        return frame
    return frame.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def colour_copy(frame: Image.Image, side: int = WORK_SIDE) -> Image.Image:
    """``working_copy`` of an RGB frame for what only looks at its colours (the views, the
    photometric check), not what hashes or keypoints are found on: the same size, at a
    fraction of the cost of Pillow's filter on three channels (an 800-px frame to 512:
    1.2 ms, not 4.7). Whole steps of the scale are averaged by ``Image.reduce``; the rest,
    under two, is smoothed by a Gaussian of sigma (scale - 1) / 2 against aliasing, as
    scikit-image's ``resize`` smooths, and sampled bilinearly by OpenCV; each way apart."""
    size = _thumbnail_size(frame.size, side)
    if size == frame.size:
        return frame
    whole = (frame.width // size[0], frame.height // size[1])
    reduced = frame.reduce(whole) if max(whole) > 1 else frame
    pixels = np.asarray(reduced)
    across, down = ((reduced.size[axis] / size[axis] - 1) / 2 for axis in (0, 1))
    if max(across, down) > 0 and min(pixels.shape[:2]) > 1:
        # A kernel a pixel wide leaves a way already at its scale (a sigma of 0) as it is.
        widths = [2 * math.ceil(3 * sigma) + 1 for sigma in (across, down)]
        pixels = cv2.GaussianBlur(pixels, widths, across, sigmaY=down)
    return Image.fromarray(cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR))


def _thumbnail_size(size: tuple[int, int], side: int) -> tuple[int, int]:
    """The size ``Image.thumbnail`` would scale a picture of ``size`` to, to fit ``side``."""
    width, height = size
    if max(width, height) <= side:
        return size
    aspect = width / height
    if width <= height:
        return (_nearest(side * aspect, lambda new: abs(aspect - new / side)), side)
    return (side, _nearest(side / aspect, lambda new: abs(aspect - side / new) if new else 0))


def _nearest(side: float, error: Callable[[int], float]) -> int:
    """The whole side, rounded down or up, whose aspect ratio is nearer (at least 1): as
    ``Image.thumbnail`` rounds."""
    return max(1, min(math.floor(side), math.ceil(side), key=error))


def views(image: Image.Image) -> list[View]:
    """Sub-rectangles of ``image`` (an RGB working copy) that may be a picture of their own."""
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    found: list[View] = []
    for name, share in (("trim", _BORDER_SHARE), ("trim_caption", _CAPTION_SHARE)):
        box = _trim(pixels, share)
        if box != (0, 0, width, height):
            _add(found, View(name, _fraction(box, width, height)))
    # The sum of the channels, three times the grey level, exact in int16; and the steps
    # in it across each boundary between neighbouring columns (x | x + 1), a row for each
    # boundary, and across each between neighbouring rows.
    total = pixels[..., 0].astype(np.int16) + pixels[..., 1] + pixels[..., 2]
    steps = (_steps(np.ascontiguousarray(total.T)), _steps(total))
    boxes: list[tuple[int, int, int, int]] = []
    _split(steps, (0, 0, width, height), depth=0, out=boxes)
    for index, box in enumerate(boxes):
        if box != (0, 0, width, height):
            # A collage's gutters are borders of the panels beside them.
            left, top, right, bottom = box
            inner = _trim(pixels[top:bottom, left:right], _BORDER_SHARE)
            box = (left + inner[0], top + inner[1], left + inner[2], top + inner[3])
            _add(found, View(f"panel_{index + 1}", _fraction(box, width, height)))
    for index, box in enumerate(_insets(*steps)):
        _add(found, View(f"inset_{index + 1}", _fraction(box, width, height)))
    return found[:_MAX_VIEWS]


def cut(image: Image.Image, view: View) -> Image.Image:
    """The part of ``image``, at any size, that ``view`` names."""
    left, top, right, bottom = view.box
    return image.crop(
        (
            round(left * image.width),
            round(top * image.height),
            round(right * image.width),
            round(bottom * image.height),
        )
    )


def _fraction(
    box: tuple[int, int, int, int], width: int, height: int
) -> tuple[float, float, float, float]:
    left, top, right, bottom = box
    return (left / width, top / height, right / width, bottom / height)


def _add(found: list[View], view: View) -> None:
    if all(iou(view.box, other.box) < 0.97 for other in found):
        found.append(view)


def area(box: tuple[float, ...]) -> float:
    """The area of a (left, top, right, bottom) box."""
    return (box[2] - box[0]) * (box[3] - box[1])


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """The area two boxes share over the area of their union."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / (area(a) + area(b) - inter)


def _trim(pixels: np.ndarray, share: float) -> tuple[int, int, int, int]:
    """The box left after cutting rows and columns mostly of each edge's own colour."""
    height, width = pixels.shape[:2]
    top, bottom, left, right = 0, height, 0, width
    # Trim the sides in turn until none moves, so that a bar on one side does not stop a
    # border on another from being seen.
    for _ in range(3):
        before = (top, bottom, left, right)
        area = pixels[top:bottom, left:right]
        top += _uniform_run(area, share)
        bottom -= _uniform_run(area[::-1], share)
        area = pixels[top:bottom, left:right].transpose(1, 0, 2)
        left += _uniform_run(area, share)
        right -= _uniform_run(area[::-1], share)
        if (top, bottom, left, right) == before:
            break
        if bottom - top < height * _MIN_PANEL or right - left < width * _MIN_PANEL:
            return 0, 0, width, height
    return left, top, right, bottom


def _uniform_run(rows: np.ndarray, share: float) -> int:
    """How many leading rows are mostly the colour of the first row."""
    if len(rows) < 2 or rows.shape[1] == 0:
        return 0
    # No border or bar is wider than the picture it frames.
    rows = rows[: len(rows) // 2]
    colour = np.median(rows[0], axis=0)
    # Most pictures have no border: the first row says so before the rest is compared.
    if _near_shares(rows[:1], colour)[0] < _BORDER_SHARE:
        return 0
    # Row by row in blocks, up to the first row that is not mostly that colour.
    blocks = []
    for start in range(0, len(rows), _BLOCK):
        block = _near_shares(rows[start : start + _BLOCK], colour)
        blocks.append(block)
        if (block < share).any():
            break
    close = np.concatenate(blocks)
    end = len(close) if (close >= share).all() else int(np.argmin(close >= share))
    if share >= _BORDER_SHARE:
        run = end
    else:
        # A caption bar: text lines are far less uniform than its margins, so the run goes
        # on through them and ends at the last uniform margin row before the picture.
        margins = np.flatnonzero(close[:end] >= _BORDER_SHARE)
        run = int(margins[-1]) + 1 if margins.size else 0
    return run if run >= max(2, round(len(rows) * 0.015)) else 0


def _near_shares(rows: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """The share of each row of (uint8, RGB) pixels within _TOLERANCE of ``colour`` in
    every channel.

    The colour is a median, a whole or half number: the bounds are rounded inwards so that
    whole-number pixels are compared as they are.
    """
    low = np.clip(np.ceil(colour - _TOLERANCE), 0, 255)
    high = np.clip(np.floor(colour + _TOLERANCE), 0, 255)
    near = cv2.inRange(np.ascontiguousarray(rows), low, high)
    return np.count_nonzero(near, axis=1) / rows.shape[1]


def _split(
    steps: tuple[np.ndarray, np.ndarray],
    box: tuple[int, int, int, int],
    depth: int,
    out: list[tuple[int, int, int, int]],
) -> None:
    left, top, right, bottom = box
    down, across = steps
    full_height, full_width = down.shape[1], across.shape[1]
    if depth > 0:
        out.append(box)
    if depth >= 2:
        return
    for axis in (1, 0):
        inside = (
            down[left : right - 1, top:bottom] if axis else across[top : bottom - 1, left:right]
        )
        seams = _seams(inside)
        if not seams:
            continue
        length = right - left if axis == 1 else bottom - top
        edges = [0, *seams, length]
        for start, end in zip(edges, edges[1:], strict=False):
            limit = (full_width if axis == 1 else full_height) * _MIN_PANEL
            if end - start < limit:
                continue
            part = (
                (left + start, top, left + end, bottom)
                if axis == 1
                else (left, top + start, right, top + end)
            )
            _split(steps, part, depth + 1, out)


def _seams(steps: np.ndarray) -> list[int]:
    """Offsets where a straight edge crosses a part of the picture, from the ``steps``
    across each boundary within it (a row for each boundary)."""
    width, height = len(steps) + 1, steps.shape[1]
    if width < 16 or height < 16:
        return []
    share = (steps >= 3 * _STEP).mean(axis=1)
    margin = max(3, round(width * 0.1))
    seams: list[int] = []
    for x in np.argsort(share)[::-1]:
        if share[x] < _SEAM_SHARE:
            break
        if x < margin or x >= width - margin:
            continue
        around = np.concatenate([share[max(0, x - 12) : max(0, x - 2)], share[x + 3 : x + 13]])
        if around.size and share[x] < 2.5 * np.median(around) + 0.1:
            continue
        if all(abs(int(x) + 1 - seam) > width * 0.05 for seam in seams):
            seams.append(int(x) + 1)
        if len(seams) >= 3:
            break
    return sorted(seams)


def _insets(down: np.ndarray, across: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The rectangles, at most _MAX_INSETS, whose sides inside the picture are straight
    edges (at least one side across and one down: a strip from edge to edge is a panel),
    those whose sides are the clearest edges first; from the steps across each boundary
    between columns (``down``) and between rows (``across``), a row for each boundary."""
    height, width = down.shape[1], across.shape[1]
    if width < 16 or height < 16:
        return []
    # The edge pixels along each boundary.
    down, across = _edges(down), _edges(across)
    xs = np.array(sorted({0, width, *_lines(down)}))
    ys = np.array(sorted({0, height, *_lines(across)}))
    # cover_down[i, j, k]: the share of line xs[i] from ys[j] to ys[k] that is an edge
    # (the frame's own sides: 1); cover_across[j, i, k] the same for ys[j] from xs[i] to xs[k].
    cover_down = _cover(down, xs, ys)
    cover_across = _cover(across, ys, xs)
    left, right, top, bottom = np.ix_(*(range(len(xs)),) * 2, *(range(len(ys)),) * 2)
    sides = np.stack(
        np.broadcast_arrays(
            cover_down[left, top, bottom],
            cover_down[right, top, bottom],
            cover_across[top, left, right],
            cover_across[bottom, left, right],
        )
    )
    inside = np.stack(
        np.broadcast_arrays(xs[left] > 0, xs[right] < width, ys[top] > 0, ys[bottom] < height)
    )
    valid = (
        (xs[right] - xs[left] >= width * _MIN_PANEL)
        & (ys[bottom] - ys[top] >= height * _MIN_PANEL)
        & (inside[0] | inside[1])
        & (inside[2] | inside[3])
        & (np.where(inside, sides, 1.0).min(axis=0) >= _INSET_COVER)
    )
    if not valid.any():
        return []
    score = np.where(inside, sides, 0.0).sum(axis=0) / np.maximum(inside.sum(axis=0), 1)
    kept: list[tuple[int, int, int, int]] = []
    for flat in np.argsort(-np.where(valid, score, -1.0), axis=None):
        if len(kept) == _MAX_INSETS or not valid.flat[flat]:
            break
        i, k, j, m = np.unravel_index(flat, valid.shape)
        box = (int(xs[i]), int(ys[j]), int(xs[k]), int(ys[m]))
        if all(iou(box, other) < 0.8 for other in kept):
            kept.append(box)
    return kept


def _steps(total: np.ndarray) -> np.ndarray:
    """The steps between neighbouring rows of ``total`` (sums of three channels), a row for
    each boundary."""
    if len(total) < 2:  # a sliver one pixel high: OpenCV has nothing to compare
        return np.zeros((0, total.shape[1]), total.dtype)
    return cv2.absdiff(total[1:], total[:-1])


def _edges(steps: np.ndarray) -> np.ndarray:
    """Which of the ``steps`` across boundaries (a row for each) are a straight cut, as 1
    or 0."""
    # The larger of the steps two pixels before and after each, across the boundary.
    around = cv2.dilate(steps, _TWO_APART, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    cut = (steps >= 3 * _STEP) | ((steps >= 3 * _FAINT_STEP) & (steps >= 2 * around))
    return cut.view(np.uint8)


_TWO_APART = np.array([[1], [0], [0], [0], [1]], np.uint8)


def _lines(edges: np.ndarray) -> list[int]:
    """The positions (from 1) of the boundaries with the longest runs of mostly
    edge pixels along them, at most _LINES, each apart from the others."""
    boundaries, length = edges.shape
    # The edge pixels in the window around each pixel, the windows cut short at the ends.
    counts = cv2.boxFilter(edges, -1, (_WINDOW, 1), normalize=False, borderType=cv2.BORDER_CONSTANT)
    mostly = np.zeros((boundaries, length + 2), dtype=bool)
    np.greater(counts * 2, _WINDOW, out=mostly[:, 1:-1])
    # Each run's start and end, read row by row (a row's own False ends part them).
    changes = np.flatnonzero(mostly[:, 1:] != mostly[:, :-1])
    starts, ends = changes[::2], changes[1::2]
    longest = np.zeros(boundaries, dtype=np.int64)
    np.maximum.at(longest, starts // (length + 1), ends - starts)
    picked: list[int] = []
    for boundary in np.argsort(-longest, kind="stable").tolist():
        if longest[boundary] < length * _MIN_RUN or len(picked) == _LINES:
            break
        if all(abs(boundary - other) > 4 for other in picked):
            picked.append(boundary)
    return [boundary + 1 for boundary in picked]


def _cover(edges: np.ndarray, lines: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """For each line and pair of span ends, the share of the line between them that is an
    edge, at the best of the boundary on the line and the one either side of it (the
    frame's own sides count as whole edges)."""
    boundaries, length = edges.shape
    spans_long = np.maximum(spans[None, :] - spans[:, None], 1)
    # How many of the first n pixels of each boundary looked at are edge.
    near = np.clip(lines[:, None] + np.arange(-2, 1), 0, boundaries - 1)
    running = np.zeros((near.size, length + 1), dtype=np.int32)
    np.cumsum(edges[near.ravel()], axis=1, out=running[:, 1:])
    at = running[:, spans].reshape(len(lines), 3, len(spans))
    best = np.zeros((len(lines), len(spans), len(spans)))
    for shift in range(3):
        best = np.maximum(best, (at[:, shift, None, :] - at[:, shift, :, None]) / spans_long)
    best[(lines == 0) | (lines > boundaries)] = 1.0
    return best

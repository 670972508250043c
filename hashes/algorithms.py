"""Perceptual hashes of an image, and the Hamming distances between them.

Three algorithms, each stored as lowercase hex:

- ``phash`` and ``dhash`` (64 bits), computed as ImageHash computes them and written
  exactly as ``str(imagehash.ImageHash)`` writes them (the tests compare), so values agree
  with anything else built on ImageHash; computed here on arrays, for many turns at once
  (an upload's turns on reductions made as matrix products, within a grey level or two
  of Pillow's, at a small share of the cost).
- ``pdq`` (256 bits, Meta's PDQ) in the hex format of Meta's reference implementation, so
  that PDQ hashes pasted from ThreatExchange or other PDQ tools compare directly with ours.
  The reference ``Hash256`` holds bit ``k`` as bit ``k % 16`` of the 16-bit word
  ``w[k // 16]`` and prints the words ``w[15]`` first, each as 4 hex digits: the first hex
  digit holds bits 255..252. ``pdqhash.compute`` returns the bits already reversed (element
  ``i`` is bit ``255 - i``), so packing its vector most significant bit first gives that
  string; ThreatExchange's own Python hasher converts it the same way. A banned image is
  hashed on its full-resolution frame, as ThreatExchange's Python hasher does, so that
  the hashes it exports are what other PDQ tools compute: downscaling to 512 px first, as
  the C++ command-line tool does, moved some corpus hashes by over 50 bits.

Uploads are only matched, never exported: they are hashed on a copy ``MATCH_SIDE`` pixels
across (``hashes.detect.probe``), a few bits from the full-resolution hashes at a small
part of the cost, which grows faster than the pixels; their PDQ is Meta's computation
written as matrix products (``pdq_turns``), the same bits at a fifth of pdqhash's cost.

Each algorithm has a version: bump it whenever the computation changes (resampling,
preprocessing, library upgrade that alters output) so stored values can be recomputed.
"""

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

import cv2
import numpy as np
import pdqhash
import scipy.fftpack
from PIL import Image

from hashes.loading import LoadedImage

# The longer side of the copy an upload is hashed on. PDQ box-filters by side/128 pixels
# before it samples: at 640 the window is 5, odd, so it stays centred; sides with an even
# window (680-760, 920-1000) moved corpus hashes about twice as far from full resolution.
MATCH_SIDE = 640
# What 64-bit pHash and dHash reduce a picture to (ImageHash's sizes and filter).
_PHASH_SIZE = (32, 32)
_DHASH_SIZE = (9, 8)
_REDUCING = Image.Resampling.LANCZOS

_Item = TypeVar("_Item")


@dataclass(frozen=True)
class Algorithm:
    name: str
    version: int
    bits: int


ALGORITHMS: dict[str, Algorithm] = {
    algorithm.name: algorithm
    for algorithm in (
        Algorithm(name="phash", version=1, bits=64),
        Algorithm(name="dhash", version=1, bits=64),
        Algorithm(name="pdq", version=1, bits=256),
    )
}


@dataclass(frozen=True)
class Fingerprint:
    hashes: dict[str, str]
    pdq_quality: int | None = None

    def distance(self, other: "Fingerprint") -> dict[str, int]:
        """Hamming distance for each algorithm that both fingerprints have."""
        return {
            name: hamming(code, other.hashes[name])
            for name, code in self.hashes.items()
            if name in other.hashes
        }


def fingerprint_image(image: Image.Image, *, exported: bool = True) -> Fingerprint:
    """Hash one RGB frame, as ``load_image`` produces, with every algorithm. PDQ by Meta's
    own code (pdqhash), as a banned picture's hashes, which are shared with other tools,
    must be; not ``exported`` (an upload's copy, only matched), as ``pdq_turns`` computes
    it, the same bits at a fraction of the cost, of an RGB frame or of its luma ("L" or
    "F")."""
    if image.mode != "RGB" and (exported or image.mode not in _GREY):
        raise ValueError(
            f"fingerprint_image needs an RGB image, not {image.mode}: load files with "
            "hashes.loading.load_image, which converts and flattens them."
        )
    pixels = np.asarray(image)
    if exported:
        bits, quality = pdqhash.compute(pixels)
    else:
        turns, quality = pdq_turns(pixels, 1)
        bits = turns[0]
    return _fingerprints([_reduced(grey_levels(image))], [bits], quality)[0]


_GREY = ("L", "F")


def grey_levels(image: Image.Image) -> Image.Image:
    """A picture in whole grey levels ("L"): an RGB one converted, a luma ("F") rounded, as
    pHash and dHash take a banned picture's."""
    if image.mode == "F":
        # Rounded to the nearest and capped at 255 (a scaled copy's luma is never negative,
        # which this would turn), at a twentieth of numpy's cost.
        return Image.fromarray(cv2.convertScaleAbs(np.asarray(image)))
    return image if image.mode == "L" else image.convert("L")


# The eight ways a picture can be turned or flipped, in pdqhash.compute_dihedral's order:
# as it is, turned 90, 180 and 270 degrees anticlockwise, flipped top to bottom, left to
# right, transposed, transversed; each as the transpose that gives that picture.
DIHEDRAL: tuple[Image.Transpose | None, ...] = (
    None,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
)
# Those that swap width and height, as the transpose followed by one that does not.
_AFTER_TRANSPOSE: dict[Image.Transpose, Image.Transpose | None] = {
    Image.Transpose.ROTATE_90: Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.ROTATE_270: Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.TRANSPOSE: None,
    Image.Transpose.TRANSVERSE: Image.Transpose.ROTATE_180,
}


def fingerprint_turns(image: Image.Image) -> list[Fingerprint]:
    """The fingerprint of an RGB frame, or of its luma, turned and flipped each way of
    ``DIHEDRAL``; PDQ's are computed in one pass (``pdq_turns``), as Meta's dihedral
    function does.

    pHash and dHash of every turn come from the grey reductions of the frame as it is
    (``_lanczos_reductions``): reducing and flipping (top to bottom, left to right, both)
    give the same pixels in either order, and reducing and transposing the same but for
    the rounding of the first pass, so each turn is a reduction flipped, or transposed
    and flipped. dHash's reduction is not square: the turns that swap width and height
    take one more, 8 wide and 9 high, transposed.
    """
    dihedral, quality = pdq_turns(np.asarray(image))
    for_phash, for_dhash, across = _lanczos_reductions(np.asarray(grey_levels(image)))
    reduced = {False: (for_phash, for_dhash), True: (for_phash.T, across.T)}
    turned = [reduced[False]]
    for turn in DIHEDRAL[1:]:
        assert turn is not None
        flipped = _FLIPS[_AFTER_TRANSPOSE.get(turn, turn)]
        phash_pixels, dhash_pixels = reduced[turn in _AFTER_TRANSPOSE]
        turned.append((flipped(phash_pixels), flipped(dhash_pixels)))
    return _fingerprints(turned, dihedral, quality)


# PDQ, as Meta's reference code computes it: the picture's luma blurred twice by a box
# filter about side/128 pixels wide (Jarosz), sampled at 64 x 64 points, the 16 x 16
# lowest frequencies of those samples but the constant one (a DCT), each bit one of them
# above their median.
_PDQ_SAMPLES = 64
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# Below this many pixels a side samples repeat pixels, and frequencies that tie in exact
# arithmetic are told apart by rounding: Meta's code decides those, as it would.
_PDQ_MIN_SIDE = 64
# How each turn of DIHEDRAL moves those frequencies: (transposed; the signs of the odd
# ones down the columns flipped; across the rows flipped).
_PDQ_TURNS = (
    (False, False, False),
    (True, True, False),
    (False, True, True),
    (True, False, True),
    (False, True, False),
    (False, False, True),
    (True, False, False),
    (True, True, True),
)
_ODD = np.where(np.arange(1, 17) % 2, -1.0, 1.0)


def pdq_turns(pixels: np.ndarray, turns: int = len(DIHEDRAL)) -> tuple[list[np.ndarray], int]:
    """PDQ's bits of an RGB array turned each of the first ``turns`` ways of ``DIHEDRAL``,
    and its quality, as ``pdqhash.compute_dihedral`` gives them (element ``i``: bit
    ``255 - i``): the same bits (the tests compare), at a fifth of its cost. A 2-D array
    is the luma itself.

    The luma, the blur and the sampling are all linear, and only the 64 x 64 samples
    count, so they are two matrix products (``_pdq_sampling``) rather than four passes
    over every pixel; a turn only transposes the frequencies and flips the signs of
    odd ones, as Meta's dihedral function turns them.
    """
    height, width = pixels.shape[:2]
    if min(height, width) < _PDQ_MIN_SIDE:
        if pixels.ndim == 2:  # a luma: its grey levels as the three channels
            pixels = np.repeat(_levels(pixels).astype(np.uint8)[..., None], 3, axis=2)
        found, quality = pdqhash.compute_dihedral(np.ascontiguousarray(pixels))
        return found[:turns], quality
    luma = pixels @ _LUMA if pixels.ndim == 3 else pixels.astype(np.float32)
    samples = _pdq_sampling(height) @ luma @ _pdq_sampling(width).T
    # Quality: the mean step between neighbouring samples, each in whole hundredths of
    # the grey range, as Meta's code rounds them.
    steps = sum(
        np.abs(np.trunc(np.diff(samples, axis=axis) * np.float32(100) / np.float32(255))).sum()
        for axis in (0, 1)
    )
    quality = min(100, int(steps) // 90)
    cosines = _pdq_cosines()
    frequencies = cosines @ samples.astype(np.float64) @ cosines.T
    found = []
    for transposed, down, across in _PDQ_TURNS[:turns]:
        turned = frequencies.T if transposed else frequencies
        if down:
            turned = turned * _ODD[:, None]
        if across:
            turned = turned * _ODD[None, :]
        flat = turned.reshape(-1)
        median = np.partition(flat, 127)[127]  # the lower median, as Meta's code takes it
        found.append((flat > median)[::-1])
    return found, quality


@lru_cache(maxsize=32)  # a copy is 640 or 384 px on its longer side; the other varies
def _pdq_sampling(size: int) -> np.ndarray:
    """For a line of ``size`` pixels, the weight of each pixel in each of PDQ's 64 samples
    along it: the sample's pixel after a box filter (a window of ``(size + 127) // 128``
    pixels, cut short at the ends, as Meta's code cuts it) twice. Each pixel of the
    first box spreads its share over the second box around it, added up as steps along
    the line: a new size costs well under a millisecond."""
    window = (size + 2 * _PDQ_SAMPLES - 1) // (2 * _PDQ_SAMPLES)
    ahead = (window + 2) // 2 - 1
    line = np.arange(size)
    first = np.maximum(0, line - (window - 1 - ahead))
    last = np.minimum(size - 1, line + ahead)
    share = 1 / (last - first + 1)
    sampled = ((np.arange(_PDQ_SAMPLES) + 0.5) * size / _PDQ_SAMPLES).astype(int)
    boxed = first[sampled, None] + np.arange(window)
    inside = boxed <= last[sampled, None]
    samples = np.broadcast_to(np.arange(_PDQ_SAMPLES)[:, None], boxed.shape)[inside]
    pixels = boxed[inside]
    weights = share[sampled[samples]] * share[pixels]
    steps = np.zeros((_PDQ_SAMPLES, size + 1))
    np.add.at(steps, (samples, first[pixels]), weights)
    np.add.at(steps, (samples, last[pixels] + 1), -weights)
    return np.cumsum(steps[:, :-1], axis=1).astype(np.float32)


@lru_cache(maxsize=1)
def _pdq_cosines() -> np.ndarray:
    """The 16 x 64 DCT matrix of PDQ's frequencies 1 to 16."""
    frequency = np.arange(1, 17)[:, None]
    sample = np.arange(_PDQ_SAMPLES)[None, :]
    scale = np.sqrt(2 / _PDQ_SAMPLES)
    return scale * np.cos(np.pi / (2 * _PDQ_SAMPLES) * frequency * (2 * sample + 1))


def _lanczos_reductions(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A grey picture reduced as pHash and dHash look at it (32x32, 9 wide and 8 high) and
    8 wide and 9 high, weighed as Pillow's Lanczos filter weighs the pixels (ImageHash's
    reduction) and rounded to whole grey levels: each pass one matrix product, the three
    reductions' first passes one product together. Pillow rounds after its first pass
    too; these lie within a grey level or two of its reductions, at a small share of
    its cost."""
    height, width = grey.shape
    sizes = (_PHASH_SIZE, _DHASH_SIZE, _DHASH_SIZE[::-1])
    weights = _lanczos_weights(width, tuple(columns for columns, _ in sizes))
    first_pass = _levels(grey.astype(np.float32) @ weights.T)
    reduced, start = [], 0
    for columns, rows in sizes:
        down = _lanczos_weights(height, (rows,))
        reduced.append(_levels(down @ first_pass[:, start : start + columns]))
        start += columns
    return reduced[0], reduced[1], reduced[2]


def _levels(pixels: np.ndarray) -> np.ndarray:
    """Pixels rounded to whole grey levels, as Pillow rounds each pass."""
    return np.floor(np.clip(pixels + 0.5, 0, 255))


@lru_cache(maxsize=64)  # uploads come in a few shapes; a new one costs under a millisecond
def _lanczos_weights(size: int, reduced_to: tuple[int, ...]) -> np.ndarray:
    """For a line of ``size`` pixels reduced to each of ``reduced_to``, the weight of each
    pixel in each reduced pixel, stacked (rows: reduced pixels): Lanczos-3 stretched over
    the reduction's scale and normalised over the pixels the line has, as Pillow's
    ``resize`` weighs them (a line of 640 reduced to all three: 125 kB)."""
    rows = []
    for count in reduced_to:
        scale = size / count
        stretch = max(scale, 1.0)
        centres = (np.arange(count) + 0.5) * scale
        apart = (np.arange(size)[None, :] - centres[:, None] + 0.5) / stretch
        near = np.abs(apart) < 3
        weights = np.zeros_like(apart)
        weights[near] = np.sinc(apart[near]) * np.sinc(apart[near] / 3)
        rows.append(weights / weights.sum(axis=1, keepdims=True))
    return np.concatenate(rows).astype(np.float32)


# A reduced picture flipped as each transpose that does not swap width and height flips it.
_FLIPS: dict[Image.Transpose | None, Callable[[np.ndarray], np.ndarray]] = {
    None: lambda pixels: pixels,
    Image.Transpose.FLIP_TOP_BOTTOM: lambda pixels: pixels[::-1],
    Image.Transpose.FLIP_LEFT_RIGHT: lambda pixels: pixels[:, ::-1],
    Image.Transpose.ROTATE_180: lambda pixels: pixels[::-1, ::-1],
}


def _reduced(grey: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """A grey picture as pHash and dHash look at it: reduced to _PHASH_SIZE and
    _DHASH_SIZE, with ImageHash's filter."""
    return (
        np.asarray(grey.resize(_PHASH_SIZE, _REDUCING)),
        np.asarray(grey.resize(_DHASH_SIZE, _REDUCING)),
    )


def _fingerprints(
    reduced: list[tuple[np.ndarray, np.ndarray]], pdq_bits: Iterable[np.ndarray], pdq_quality: float
) -> list[Fingerprint]:
    """The one place pHash, dHash and PDQ's bits become fingerprints: for each picture,
    its grey reductions (``_reduced``) and its PDQ bits.

    pHash and dHash are computed as ImageHash computes them (the tests compare), all the
    pictures at once: pHash, the signs of the lowest 8x8 coefficients of the reduction's
    2-D DCT against their median; dHash, whether each pixel is brighter than the one to
    its left.
    """
    for_phash = np.stack([pixels for pixels, _ in reduced])
    coefficients = scipy.fftpack.dct(scipy.fftpack.dct(for_phash, axis=1), axis=2)[:, :8, :8]
    medians = np.median(coefficients.reshape(len(reduced), -1), axis=1)
    phashes = coefficients > medians[:, None, None]
    for_dhash = np.stack([pixels for _, pixels in reduced])
    dhashes = for_dhash[:, :, 1:] > for_dhash[:, :, :-1]
    return [
        Fingerprint(
            hashes={
                "phash": _hex(phash),
                "dhash": _hex(dhash),
                "pdq": _hex(bits.astype(bool)),
            },
            pdq_quality=int(pdq_quality),
        )
        for phash, dhash, bits in zip(phashes, dhashes, pdq_bits, strict=True)
    ]


def _hex(bits: np.ndarray) -> str:
    """Bits (any shape, read row by row) as hex, the first bit the most significant."""
    return np.packbits(bits.reshape(-1)).tobytes().hex()


def fingerprint_frames(loaded: LoadedImage) -> list[Fingerprint]:
    """One fingerprint per frame, first frame first, leaving out repeats of earlier ones."""
    return [fingerprint for _, fingerprint in distinct_frames(loaded)]


def distinct_frames(loaded: LoadedImage) -> list[tuple[Image.Image, Fingerprint]]:
    """Each frame with its fingerprint (of the frame as decoded), first frame first,
    leaving out repeats."""
    hashed = ((frame, fingerprint_image(frame)) for frame in loaded.frames)
    return distinct(hashed, lambda item: item[1])


def distinct(items: Iterable[_Item], fingerprint: Callable[[_Item], Fingerprint]) -> list[_Item]:
    """The items (frames, or anything made of one), first first, leaving out those whose
    hashes all repeat an earlier item's: a repeated frame adds nothing to check."""
    found: dict[tuple[tuple[str, str], ...], _Item] = {}
    for item in items:
        found.setdefault(tuple(sorted(fingerprint(item).hashes.items())), item)
    return list(found.values())


def hamming(a_hex: str, b_hex: str) -> int:
    """Number of differing bits between two hex hashes of the same length."""
    if len(a_hex) != len(b_hex):
        raise ValueError(
            f"Cannot compare hashes of different lengths ({len(a_hex)} and {len(b_hex)} hex "
            "digits): they come from different algorithms."
        )
    return (int(a_hex, 16) ^ int(b_hex, 16)).bit_count()


_HEX = re.compile(r"[0-9a-f]+")


def parse_hash(algorithm: str, text: str) -> str:
    """Normalise a pasted hash to lowercase hex, or raise ValueError saying what is wrong."""
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"Unknown hash algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}."
        )
    digits = ALGORITHMS[algorithm].bits // 4
    code = "".join(text.split()).lower()
    if not code:
        raise ValueError(f"The {algorithm} hash is empty; paste its {digits} hex digits.")
    if _HEX.fullmatch(code) is None:
        bad = sorted({char for char in code if char not in "0123456789abcdef"})
        raise ValueError(
            f"The {algorithm} hash contains {''.join(bad)!r}, which are not hex digits; "
            f"a {algorithm} hash is {digits} characters of 0-9 and a-f."
        )
    if len(code) != digits:
        raise ValueError(
            f"The {algorithm} hash has {len(code)} hex digits but a {algorithm} hash has "
            f"exactly {digits}; check it was copied whole and is for the right algorithm."
        )
    return code


def algorithm_versions() -> dict[str, int]:
    """The current version of each algorithm, to store beside the hashes it produced."""
    return {name: algorithm.version for name, algorithm in ALGORITHMS.items()}

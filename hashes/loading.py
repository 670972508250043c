"""Decode untrusted image files into RGB frames ready for hashing.

The format is taken from the content, never from the file name, and only the decoders in
``ALLOWED_FORMATS`` ever see the bytes. Sizes are checked before pixels are decoded. Every
failure is raised as an ``ImageError`` subclass, so a caller can record the reason and move on.
"""

import contextlib
import errno
import hashlib
import io
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from hashes.errors import (
    AnimationTooLong,
    CorruptImage,
    DecompressionBomb,
    FileTooLarge,
    ImageTooSmall,
    UncheckableFormat,
    UnsupportedFormat,
)

ALLOWED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"})
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
DEFAULT_MAX_FRAMES = 32
MIN_SIDE = 8
# Decoding every frame of an animation may cost this many times max_pixels.
DECODE_BUDGET = 4
# While decoding an animation, the pixels of this many times max_frames distinct frames
# are held at most.
KEPT_FRAMES_FACTOR = 4
_TOLERANT_LOCK = threading.Lock()
# Frames after the first are kept at most this many pixels on their longer side.
LATER_FRAME_SIDE = 1024
# The largest side any check of an upload works on (hashes.detect.QUERY_FEATURE_SIDE).
DECODE_SIDE = 640
# A JPEG upload at least twice this large is decoded reduced, to no less than this: the
# side its whole-picture hashes are taken at (hashes.algorithms.MATCH_SIDE), which its
# local features share (DECODE_SIDE).
DRAFT_SIDE = 640
# The JPEG decoder's DCT scaling: the whole picture, at 1/8, 1/4 or 1/2 of its size.
_DCT_SCALES = (8, 4, 2)

_ALLOWED_NAMES = "JPEG, PNG, GIF, WebP, BMP or TIFF"
_WHITE = (255, 255, 255, 255)

# Only used to make the rejection message of a disguised file more helpful; detection
# itself is left to the allowed decoders.
_KNOWN_NON_IMAGES = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive or an Office document"),
    (b"\x7fELF", "a Linux executable"),
    (b"MZ", "a Windows executable"),
    (b"<", "text markup such as HTML, XML or SVG"),
)


# How many bytes from the start of a file image_kind looks at: an SVG may open with a
# long XML prologue or comment before its <svg> element.
SNIFF_BYTES = 65536
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "BigTIFF"),
    (b"MM\x00+", "BigTIFF"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xffO\xffQ", "JPEG 2000"),
    (b"8BPS", "Photoshop"),
    (b"qoif", "QOI"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"DDS ", "DDS"),
    (b"v/1\x01", "OpenEXR"),
    (b"#?RADIANCE", "Radiance HDR"),
)
# ISO base media files (HEIF, AVIF) name their kind in the "ftyp" box's brands.
_IMAGE_BRANDS = {
    b"heic": "HEIF",
    b"heix": "HEIF",
    b"hevc": "HEIF",
    b"hevx": "HEIF",
    b"heim": "HEIF",
    b"heis": "HEIF",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
    b"avif": "AVIF",
    b"avis": "AVIF",
}
_BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}


def image_kind(head: bytes) -> str | None:
    """The image format a file's first SNIFF_BYTES bytes show, whether hashguard can
    decode it or not; None when the content is not an image, whatever its name."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    if head[4:8] == b"ftyp":
        brands = [head[8:12]] + [head[i : i + 4] for i in range(16, min(len(head), 64), 4)]
        for brand in brands:
            if brand in _IMAGE_BRANDS:
                return _IMAGE_BRANDS[brand]
    if len(head) > 2 and head[0:1] == b"P" and head[1:2] in b"1234567" and head[2:3].isspace():
        return "Netpbm"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    # Markup with an <svg> element shows a picture (maybe an embedded one): held, since it
    # cannot be checked, rather than passed as text.
    if text.startswith(b"<") and b"<svg" in text:
        return "SVG"
    return None


@dataclass(frozen=True)
class LoadedImage:
    format: str
    width: int
    height: int
    # The first frame (see load_image for its size), then the distinct later frames shown
    # longest. ``width`` and ``height`` are the first frame's full size, however decoded.
    frames: list[Image.Image]
    frame_count: int
    # How many distinct pictures the animation shows (1 for a still image).
    distinct_frames: int = 1
    # What was wrong with a cut or damaged file that was decoded as far as it goes.
    damage: str = ""


def load_image(
    source: bytes | str | os.PathLike,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_frames: int = DEFAULT_MAX_FRAMES,
    full_size: bool = False,
) -> LoadedImage:
    """Decode an image from bytes or a file path into RGB frames.

    A JPEG at least twice ``DRAFT_SIDE`` on its longer side is decoded reduced, by the
    decoder's DCT scaling (1/2, 1/4 or 1/8), as far as its longer side stays at least
    ``DRAFT_SIDE``: uploads are checked on copies no larger than ``DECODE_SIDE``, so the
    full-size pixels would only be made to be scaled down again. ``full_size`` decodes every pixel:
    banned images are hashed at full size, so that their PDQ hashes are what other PDQ
    implementations compute from the file.

    Frames have EXIF orientation applied and transparency flattened onto white. Every
    frame of an animation is decoded; the first and, of the distinct later ones, the
    ``max_frames - 1`` shown longest are kept, so that a picture on screen for seconds is
    never skipped. ``max_pixels`` applies to each frame, and ``DECODE_BUDGET * max_pixels``
    to all the frames of an animation together. Pillow's own limit (twice
    ``Image.MAX_IMAGE_PIXELS``) still applies above that. A cut or damaged file is decoded
    as far as it goes, and ``damage`` says what was wrong.

    A multi-picture JPEG (MPO) is loaded as a JPEG with its primary picture only: the other
    pictures are depth maps, HDR gain maps or a stereo twin, not frames of the image.

    Raises an ``ImageError`` subclass for anything wrong with the content. An ``OSError``
    from opening or reading the path (missing file, no permission) is left to propagate:
    it is a fault of the pipeline, not of the upload, and is worth retrying.
    """
    if max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, not {max_frames}")
    data = source if isinstance(source, bytes) else _read_file(source, max_bytes)
    if len(data) > max_bytes:
        raise _too_large(len(data), max_bytes)
    if not data:
        raise ImageTooSmall(
            "The file is empty (0 bytes). Upload it again: the transfer may have failed."
        )
    try:
        image = Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecompressionBomb(
            f"The image declares more pixels than can safely be decoded ({exc}). "
            "Upload a smaller version."
        ) from exc
    except UnidentifiedImageError as exc:
        kind = image_kind(data[:SNIFF_BYTES])
        if kind is not None:
            raise UncheckableFormat(
                f"The content is a {kind} image, which hashguard cannot decode, whatever the "
                f"file name says. Convert it to {_ALLOWED_NAMES} and upload it again."
            ) from exc
        raise UnsupportedFormat(
            f"The content is not a {_ALLOWED_NAMES} image{describe_content(data)}, whatever "
            "the file name says. Convert it to one of those formats and upload it again."
        ) from exc
    # Plugins reading untrusted headers raise many exception types (OSError, SyntaxError,
    # struct.error, ...); any of them means the file cannot be read.
    except Exception as exc:
        raise CorruptImage(
            f"The image header is damaged ({exc}). Upload the original file again."
        ) from exc
    with image:
        return _decode(image, max_pixels, max_frames, None if full_size else DRAFT_SIDE)


def _read_file(path: str | os.PathLike, max_bytes: int) -> bytes:
    # O_NONBLOCK so that a FIFO in an upload folder is rejected below instead of blocking.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsupportedFormat(
                f"{os.fspath(path)!r} is a symbolic link. Links are never followed, so that an "
                "upload cannot point at other files on the server: upload the image itself."
            ) from exc
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsupportedFormat(
                f"{os.fspath(path)!r} is not a regular file. Upload an image file."
            )
        if info.st_size > max_bytes:
            raise _too_large(info.st_size, max_bytes)
        with os.fdopen(fd, "rb", closefd=False) as file:
            # One byte more than allowed, to notice a file that grew after fstat.
            return file.read(max_bytes + 1)
    finally:
        os.close(fd)


def _decode(
    image: Image.Image, max_pixels: int, max_frames: int, draft_side: int | None
) -> LoadedImage:
    width, height = image.size
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageTooSmall(
            f"The image is {width}x{height} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed "
            "to fingerprint it. Upload a larger version."
        )
    _check_pixels(image.size, max_pixels)
    image_format = "JPEG" if image.format == "MPO" else str(image.format)
    # Only the JPEG decoder can make the reduced picture without the full one.
    draft_side = draft_side if image_format == "JPEG" else None
    try:
        frames = _frames(image, image_format, max_pixels, max_frames, draft_side)
        damage = ""
    except (DecompressionBomb, AnimationTooLong):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecompressionBomb(f"{exc}. Upload a smaller version.") from exc
    # Decoders fed damaged data raise many exception types (OSError for truncation,
    # ValueError, SyntaxError, EOFError, ...): decode again as far as the data goes, so
    # that what a browser would show of a cut or damaged file is still checked.
    except Exception as exc:
        damage = f"{exc}"
        try:
            with _tolerant():
                frames = _frames(image, image_format, max_pixels, max_frames, draft_side)
        except (DecompressionBomb, AnimationTooLong):
            raise
        except Exception as again:
            raise CorruptImage(
                f"The {image_format} image data is damaged beyond decoding ({again}). "
                "Upload the original file again."
            ) from again
        pixels = np.asarray(frames.kept[0])
        if (pixels == pixels[0, 0]).all():
            raise CorruptImage(
                f"The {image_format} image data is damaged ({damage}) and none of its "
                "picture decodes. Upload the original file again."
            ) from exc
    first = frames.kept[0]
    if draft_side is not None and image.size != (width, height):
        # Decoded reduced: the full size is the declared one, turned as the frame was.
        if image.getexif().get(ExifTags.Base.Orientation, 1) in _SIDEWAYS:
            width, height = height, width
    else:
        width, height = first.size
    return LoadedImage(
        format=image_format,
        width=width,
        height=height,
        frames=frames.kept,
        frame_count=frames.count,
        distinct_frames=frames.distinct,
        damage=damage,
    )


@contextlib.contextmanager
def _tolerant() -> Iterator[None]:
    # Pillow only has a process-wide switch for decoding cut files; the lock keeps two
    # tolerant decodes from resetting it under each other.
    with _TOLERANT_LOCK:
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass
class _Distinct:
    """One distinct picture of an animation: where it first appears, and for how long it
    is shown in all (repeats included)."""

    index: int
    shown_ms: int
    frame: Image.Image | None


@dataclass
class _Frames:
    kept: list[Image.Image]
    count: int
    distinct: int


def _frames(
    image: Image.Image,
    image_format: str,
    max_pixels: int,
    max_frames: int,
    draft_side: int | None = None,
) -> _Frames:
    """The first frame, and the distinct later frames shown longest, up to max_frames.

    Frames decode in sequence, so every frame is decoded, up to a budget of DECODE_BUDGET
    times max_pixels; an animation over it cannot be checked and is refused whole. A
    still JPEG is decoded reduced towards ``draft_side`` (None: at full size).
    """
    frame_count = 1 if image_format == "JPEG" else getattr(image, "n_frames", 1)
    if frame_count == 1:
        return _Frames([_frame(image, 0, max_pixels, draft_side)], 1, 1)
    width, height = image.size
    budget = DECODE_BUDGET * max_pixels
    if width * height * frame_count > budget:
        raise AnimationTooLong(
            f"The animation has {frame_count:,} frames of {width}x{height} pixels; checking "
            f"every frame means decoding {width * height * frame_count:,} pixels, over the "
            f"limit of {budget:,}. Upload a shorter or smaller version."
        )
    distinct: dict[bytes, _Distinct] = {}
    # The later frames whose pixels are held; at most KEPT_FRAMES_FACTOR * max_frames.
    held: list[_Distinct] = []
    first = None
    for index in range(frame_count):
        frame = _frame(image, index, max_pixels)
        shown = _shown_ms(image.info.get("duration"))
        if first is None:
            first = frame
        key = _identity(frame)
        seen = distinct.get(key)
        if seen is None:
            seen = distinct[key] = _Distinct(index, shown, None)
        else:
            seen.shown_ms += shown
        if seen.index and seen.frame is None:
            seen.frame = _shrunk(frame)
            held.append(seen)
            _forget_shortest(held, keep=KEPT_FRAMES_FACTOR * max_frames)
    assert first is not None
    ranked = sorted(held, key=lambda item: -item.shown_ms)
    chosen = sorted(ranked[: max_frames - 1], key=lambda item: item.index)
    kept = [first, *(item.frame for item in chosen if item.frame)]
    return _Frames(kept, frame_count, len(distinct))


def _forget_shortest(held: list[_Distinct], *, keep: int) -> None:
    """Drop the pixels of the frame shown shortest so far once more than keep are held,
    to bound memory; a frame that comes back takes them again."""
    if len(held) > keep:
        shortest = min(held, key=lambda item: item.shown_ms)
        shortest.frame = None
        held.remove(shortest)


def _shown_ms(duration: object) -> int:
    # Browsers show frames that ask for less than 20 ms (or none) for 100 ms.
    if not isinstance(duration, int | float) or duration < 20:
        return 100
    return int(duration)


def _identity(frame: Image.Image) -> bytes:
    # All the pixels: a frame made to look like another in any smaller summary is not
    # taken for a repeat of it.
    return hashlib.blake2b(frame.tobytes(), digest_size=16).digest()


def _frame(
    image: Image.Image, index: int, max_pixels: int, draft_side: int | None = None
) -> Image.Image:
    image.seek(index)
    # Pages of a TIFF can each have their own size.
    _check_pixels(image.size, max_pixels)
    if draft_side is not None:
        _draft(image, draft_side)
    image.load()
    return _to_rgb(ImageOps.exif_transpose(image))


# The EXIF orientations that swap width and height (transposed, turned 90 degrees either
# way, transversed), as ImageOps.exif_transpose reads them.
_SIDEWAYS = frozenset({5, 6, 7, 8})


def _draft(image: Image.Image, side: int) -> None:
    """Have the JPEG decoder scale ``image`` down in the DCT, by the largest of 1/8, 1/4
    and 1/2 that leaves its longer side at least ``side`` and its shorter side at least
    MIN_SIDE; the full-size pixels are then never made. The mode is left as it is."""
    width, height = image.size
    for scale in _DCT_SCALES:
        if max(width, height) // scale >= side and min(width, height) // scale >= MIN_SIDE:
            # Pillow picks the largest scale that keeps at least the size asked for.
            image.draft(None, (width // scale, height // scale))
            return


def _shrunk(frame: Image.Image) -> Image.Image:
    # Later frames are kept small so that a long animation of large frames cannot hold
    # gigabytes; perceptual hashes of a frame this size barely differ from full size.
    if max(frame.size) > LATER_FRAME_SIDE:
        frame.thumbnail((LATER_FRAME_SIDE, LATER_FRAME_SIDE), Image.Resampling.LANCZOS)
    return frame


def _to_rgb(frame: Image.Image) -> Image.Image:
    # Pillow clips high-bit-depth values to 255 when converting to RGB, which would turn
    # most of a 16-bit image white.
    if frame.mode.startswith("I;16"):
        frame = Image.fromarray((np.asarray(frame) // 257).astype(np.uint8))
    elif frame.mode in ("I", "F"):
        # 32-bit integer and float images have no fixed white point: stretch to full range.
        values = np.asarray(frame, dtype=np.float64)
        span = values.max() - values.min()
        scaled = (values - values.min()) * (255 / span) if span else np.zeros_like(values)
        frame = Image.fromarray(scaled.astype(np.uint8))
    if frame.has_transparency_data:
        canvas = Image.new("RGBA", frame.size, _WHITE)
        canvas.alpha_composite(frame.convert("RGBA"))
        return canvas.convert("RGB")
    return frame.convert("RGB")


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise DecompressionBomb(
            f"The image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,}. Upload a smaller version."
        )


def _too_large(size: int, max_bytes: int) -> FileTooLarge:
    return FileTooLarge(
        f"The file is {size:,} bytes, over the limit of {max_bytes:,} bytes. "
        "Upload a smaller or more compressed version."
    )


def describe_content(data: bytes) -> str:
    """What a file that is not an image looks like, for messages: " (it looks like ...)"."""
    start = data[:1024].lstrip()
    for signature, description in _KNOWN_NON_IMAGES:
        if start.startswith(signature):
            return f" (it looks like {description})"
    return ""

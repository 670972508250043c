"""Decode untrusted image files into RGB frames ready for hashing.

The format is taken from the content, never from the file name, and only the decoders in
``ALLOWED_FORMATS`` ever see the bytes. Sizes are checked before pixels are decoded. Every
failure is raised as an ``ImageError`` subclass, so a caller can record the reason and move on.
"""

import errno
import io
import os
import stat
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hashes.errors import (
    CorruptImage,
    DecompressionBomb,
    FileTooLarge,
    ImageTooSmall,
    UnsupportedFormat,
)

ALLOWED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"})
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
DEFAULT_MAX_FRAMES = 32
MIN_SIDE = 8
# Decoding an animation up to its last sampled frame may cost this many times max_pixels.
DECODE_BUDGET = 4
# Frames after the first are kept at most this many pixels on their longer side.
LATER_FRAME_SIDE = 1024

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


@dataclass(frozen=True)
class LoadedImage:
    format: str
    width: int
    height: int
    frames: list[Image.Image]
    frame_count: int


def load_image(
    source: bytes | str | os.PathLike,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_frames: int = DEFAULT_MAX_FRAMES,
) -> LoadedImage:
    """Decode an image from bytes or a file path into RGB frames.

    Frames have EXIF orientation applied and transparency flattened onto white. An
    animation with more than ``max_frames`` frames is sampled evenly from first to last.
    ``max_pixels`` applies to each frame, and ``max_pixels * max_frames`` to all the frames
    of an animation together, because most animated formats decode every frame in turn.
    Pillow's own limit (twice ``Image.MAX_IMAGE_PIXELS``) still applies above that.

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
        raise UnsupportedFormat(
            f"The content is not a {_ALLOWED_NAMES} image{_describe(data)}, whatever the file "
            f"name says. Convert it to one of those formats and upload it again."
        ) from exc
    # Plugins reading untrusted headers raise many exception types (OSError, SyntaxError,
    # struct.error, ...); any of them means the file cannot be read.
    except Exception as exc:
        raise CorruptImage(
            f"The image header is damaged ({exc}). Upload the original file again."
        ) from exc
    with image:
        return _decode(image, max_pixels, max_frames)


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


def _decode(image: Image.Image, max_pixels: int, max_frames: int) -> LoadedImage:
    width, height = image.size
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageTooSmall(
            f"The image is {width}x{height} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed "
            "to fingerprint it. Upload a larger version."
        )
    _check_pixels(image.size, max_pixels)
    image_format = "JPEG" if image.format == "MPO" else image.format
    try:
        frame_count = 1 if image_format == "JPEG" else getattr(image, "n_frames", 1)
        indices = _sample(frame_count, max_frames)
        # Frames decode in sequence, so reaching the last sampled frame decodes every
        # frame before it: bound that work, not just the size of one frame.
        decoded = width * height * (indices[-1] + 1)
        if decoded > DECODE_BUDGET * max_pixels:
            raise DecompressionBomb(
                f"The animation has {frame_count:,} frames of {width}x{height} pixels; "
                f"checking it means decoding {decoded:,} pixels, over the limit of "
                f"{DECODE_BUDGET * max_pixels:,}. Upload a shorter or smaller version."
            )
        frames = [_frame(image, indices[0], max_pixels)]
        frames += [_shrunk(_frame(image, index, max_pixels)) for index in indices[1:]]
    except DecompressionBomb:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecompressionBomb(f"{exc}. Upload a smaller version.") from exc
    # Decoders fed damaged data raise many exception types (OSError for truncation,
    # ValueError, SyntaxError, EOFError, ...); any of them means the pixels cannot be read.
    except Exception as exc:
        raise CorruptImage(
            f"The {image_format} image data is damaged or incomplete ({exc}). "
            "Upload the original file again."
        ) from exc
    return LoadedImage(
        format=image_format,
        width=frames[0].width,
        height=frames[0].height,
        frames=frames,
        frame_count=frame_count,
    )


def _frame(image: Image.Image, index: int, max_pixels: int) -> Image.Image:
    image.seek(index)
    # Pages of a TIFF can each have their own size.
    _check_pixels(image.size, max_pixels)
    image.load()
    return _to_rgb(ImageOps.exif_transpose(image))


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


def _sample(frame_count: int, max_frames: int) -> list[int]:
    if frame_count <= max_frames:
        return list(range(frame_count))
    if max_frames == 1:
        return [0]
    step = (frame_count - 1) / (max_frames - 1)
    return [round(position * step) for position in range(max_frames)]


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


def _describe(data: bytes) -> str:
    start = data[:1024].lstrip()
    for signature, description in _KNOWN_NON_IMAGES:
        if start.startswith(signature):
            return f" (it looks like {description})"
    return ""

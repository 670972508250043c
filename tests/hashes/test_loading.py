import io
import os
import random
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from hashes.errors import (
    CorruptImage,
    DecompressionBomb,
    FileTooLarge,
    ImageError,
    ImageTooSmall,
    UnsupportedFormat,
)
from hashes.loading import ALLOWED_FORMATS, load_image
from tests.images import encode, photo, photo_path, save

RED = (255, 0, 0)
WHITE = (255, 255, 255)


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG header that claims a size its (tiny) data does not have."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("photo.jpg", encode(photo("rocket"), "JPEG"))
    return buffer.getvalue()


@pytest.mark.parametrize("image_format", sorted(ALLOWED_FORMATS))
def test_each_allowed_format_loads_from_a_file(tmp_path, image_format):
    original = photo("coffee")
    # The suffix says nothing, so the format can only come from the content.
    path = save(original, tmp_path / "upload.bin", image_format)

    loaded = load_image(path)

    assert loaded.format == image_format
    assert (loaded.width, loaded.height) == original.size
    assert loaded.frame_count == 1
    assert [frame.mode for frame in loaded.frames] == ["RGB"]
    assert loaded.frames[0].size == original.size


def test_bytes_str_and_pathlike_sources_load_the_same(tmp_path):
    path = save(photo("chelsea"), tmp_path / "chelsea.png", "PNG")

    pixels = {
        load_image(source).frames[0].tobytes() for source in (path.read_bytes(), str(path), path)
    }

    assert pixels == {photo("chelsea").tobytes()}


def test_format_comes_from_content_not_name(tmp_path):
    path = save(photo("rocket"), tmp_path / "rocket.jpg", "PNG")

    assert load_image(path).format == "PNG"


@pytest.mark.parametrize(
    ("orientation", "transpose"),
    [
        (3, Image.Transpose.ROTATE_180),
        (6, Image.Transpose.ROTATE_270),
        (8, Image.Transpose.ROTATE_90),
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, transpose):
    original = photo("rocket")
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    path = save(original, tmp_path / "camera.jpg", "JPEG", exif=exif)
    with Image.open(path) as stored:
        upright = stored.convert("RGB").transpose(transpose)

    loaded = load_image(path)

    assert (loaded.width, loaded.height) == upright.size
    assert loaded.frames[0].tobytes() == upright.tobytes()


def transparent_image(mode: str) -> Image.Image:
    """Left half opaque red (black in grey modes), right half fully transparent."""
    image = Image.new("RGBA", (32, 16), (0, 0, 0, 0))
    image.paste((*RED, 255), (0, 0, 16, 16))
    if mode == "RGBA":
        return image
    if mode == "LA":
        return image.convert("LA")
    palette = image.convert("RGB").quantize(colors=2)
    palette.info["transparency"] = palette.getpixel((31, 0))
    return palette


@pytest.mark.parametrize(
    ("image_format", "mode"),
    [("PNG", "RGBA"), ("PNG", "LA"), ("PNG", "P"), ("GIF", "P"), ("WEBP", "RGBA")],
)
def test_transparency_is_flattened_onto_white(image_format, mode):
    image = transparent_image(mode)
    options = {"lossless": True} if image_format == "WEBP" else {}
    opaque = image.convert("RGBA").getpixel((0, 0))[:3]

    frame = load_image(encode(image, image_format, **options)).frames[0]

    assert frame.mode == "RGB"
    assert frame.getpixel((0, 0)) == opaque
    assert frame.getpixel((31, 15)) == WHITE


def test_half_transparent_pixels_are_blended_with_white():
    image = Image.new("RGBA", (16, 16), (*RED, 128))

    frame = load_image(encode(image, "PNG")).frames[0]

    assert frame.getpixel((0, 0)) == (255, 127, 127)


def test_sixteen_bit_greyscale_keeps_its_tones():
    grey = photo("astronaut").convert("L")
    deep = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)
    assert deep.mode == "I;16"

    frame = load_image(encode(deep, "PNG")).frames[0]

    assert np.array_equal(np.asarray(frame)[..., 0], np.asarray(grey))


@pytest.mark.parametrize(("image_format", "mode"), [("JPEG", "CMYK"), ("BMP", "1"), ("TIFF", "L")])
def test_other_modes_become_rgb(image_format, mode):
    image = photo("coffee").convert(mode)

    frame = load_image(encode(image, image_format)).frames[0]

    assert frame.mode == "RGB"
    assert frame.size == image.size


COLOURS = [
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (0, 255, 255),
    (255, 0, 255),
    (255, 255, 255),
    (0, 0, 0),
]


def animation() -> bytes:
    frames = [Image.new("RGB", (16, 16), colour) for colour in COLOURS]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


def test_animated_gif_loads_every_frame():
    loaded = load_image(animation())

    assert loaded.frame_count == len(COLOURS)
    assert [frame.getpixel((8, 8)) for frame in loaded.frames] == COLOURS


def test_long_animation_is_sampled_evenly_from_the_first_frame_to_the_last():
    loaded = load_image(animation(), max_frames=3)

    assert loaded.frame_count == len(COLOURS)
    assert [frame.getpixel((8, 8)) for frame in loaded.frames] == [
        COLOURS[0],
        COLOURS[4],
        COLOURS[7],
    ]


def test_only_the_frames_up_to_the_last_sampled_one_count_towards_the_budget():
    # 16x16 frames: the whole animation is over 4 x 256 pixels, its first frame is not.
    assert len(COLOURS) * 16 * 16 > 4 * 256
    loaded = load_image(animation(), max_pixels=256, max_frames=1)

    assert loaded.frame_count == len(COLOURS)
    assert [frame.getpixel((8, 8)) for frame in loaded.frames] == COLOURS[:1]


def test_later_frames_of_a_large_animation_are_kept_small():
    big = [photo("rocket").resize((2400, 1600)), photo("coffee").resize((2400, 1600))]
    data = encode(big[0], "GIF", save_all=True, append_images=big[1:])

    loaded = load_image(data)

    assert loaded.frames[0].size == (2400, 1600)
    assert max(loaded.frames[1].size) == 1024


def test_max_frames_one_keeps_the_first_frame():
    loaded = load_image(animation(), max_frames=1)

    assert [frame.getpixel((8, 8)) for frame in loaded.frames] == [COLOURS[0]]


def test_multi_picture_jpeg_loads_as_its_primary_picture():
    primary = photo("astronaut")
    data = encode(primary, "MPO", save_all=True, append_images=[photo("chelsea")])

    loaded = load_image(data)

    assert (loaded.format, loaded.frame_count, len(loaded.frames)) == ("JPEG", 1, 1)
    assert loaded.frames[0].tobytes() == load_image(encode(primary, "JPEG")).frames[0].tobytes()


BAD_SOURCES = {
    "empty file": (lambda tmp: b"", {}, ImageTooSmall),
    "random bytes": (lambda tmp: random.Random(7).randbytes(4096), {}, UnsupportedFormat),
    "html named .jpg": (
        lambda tmp: save_bytes(tmp / "photo.jpg", b"<!doctype html><html><body>hi</body></html>"),
        {},
        UnsupportedFormat,
    ),
    "svg": (
        lambda tmp: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
        {},
        UnsupportedFormat,
    ),
    "pdf": (
        lambda tmp: b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n",
        {},
        UnsupportedFormat,
    ),
    "zip named .jpg": (lambda tmp: save_bytes(tmp / "a.jpg", zip_bytes()), {}, UnsupportedFormat),
    "ico": (lambda tmp: encode(photo("rocket").resize((64, 64)), "ICO"), {}, UnsupportedFormat),
    "ppm": (lambda tmp: encode(photo("rocket"), "PPM"), {}, UnsupportedFormat),
    "truncated jpeg": (
        lambda tmp: encode(photo("chelsea"), "JPEG")[:6000],
        {},
        CorruptImage,
    ),
    "truncated png": (lambda tmp: encode(photo("chelsea"), "PNG")[:20000], {}, CorruptImage),
    "png declaring 10 gigapixels": (
        lambda tmp: png_declaring(100_000, 100_000),
        {},
        DecompressionBomb,
    ),
    "png declaring 64 megapixels": (lambda tmp: png_declaring(8000, 8000), {}, DecompressionBomb),
    "over max_pixels": (
        lambda tmp: encode(photo("rocket"), "PNG"),
        {"max_pixels": 10_000},
        DecompressionBomb,
    ),
    "animation over its pixel budget": (
        lambda tmp: animation(),
        {"max_pixels": 256, "max_frames": 4},
        DecompressionBomb,
    ),
    "bytes over max_bytes": (
        lambda tmp: encode(photo("rocket"), "JPEG"),
        {"max_bytes": 1000},
        FileTooLarge,
    ),
    "file over max_bytes": (
        lambda tmp: save(photo("rocket"), tmp / "big.jpg", "JPEG"),
        {"max_bytes": 1000},
        FileTooLarge,
    ),
    "4x4 image": (lambda tmp: encode(Image.new("RGB", (4, 4), RED), "PNG"), {}, ImageTooSmall),
    "7 pixels wide": (
        lambda tmp: encode(Image.new("RGB", (7, 300), RED), "PNG"),
        {},
        ImageTooSmall,
    ),
    "symlink": (lambda tmp: symlink(tmp, photo_path("rocket")), {}, UnsupportedFormat),
    "fifo": (lambda tmp: fifo(tmp), {}, UnsupportedFormat),
    "directory": (lambda tmp: tmp, {}, UnsupportedFormat),
}


def save_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def symlink(tmp: Path, target: Path) -> Path:
    link = tmp / "link.jpg"
    link.symlink_to(target)
    return link


def fifo(tmp: Path) -> Path:
    path = tmp / "pipe.jpg"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("case", BAD_SOURCES)
def test_bad_input_raises_its_own_error(tmp_path, case):
    make, options, error = BAD_SOURCES[case]

    with pytest.raises(ImageError) as raised:
        load_image(make(tmp_path), **options)

    assert type(raised.value) is error
    assert raised.value.code == error.code
    # The message is for a person: it says what to do, not only what went wrong.
    assert any(advice in str(raised.value) for advice in ("Upload", "upload", "Convert"))


def test_error_codes_are_distinct_machine_names():
    errors = [UnsupportedFormat, CorruptImage, DecompressionBomb, FileTooLarge, ImageTooSmall]

    assert [error.code for error in errors] == [
        "unsupported_format",
        "corrupt",
        "decompression_bomb",
        "file_too_large",
        "too_small",
    ]


def test_messages_name_what_a_disguised_file_looks_like(tmp_path):
    with pytest.raises(UnsupportedFormat, match="PDF"):
        load_image(BAD_SOURCES["pdf"][0](tmp_path))
    with pytest.raises(UnsupportedFormat, match="HTML"):
        load_image(BAD_SOURCES["html named .jpg"][0](tmp_path))
    with pytest.raises(UnsupportedFormat, match="symbolic link"):
        load_image(symlink(tmp_path, photo_path("rocket")))


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pillow_bomb_warning_raised_as_error_is_reported_as_a_bomb():
    with pytest.raises(DecompressionBomb):
        load_image(png_declaring(12_000, 12_000), max_pixels=200_000_000)


def test_unreadable_path_is_left_to_the_caller(tmp_path):
    # A vanished file is a pipeline problem worth retrying, not a verdict on the upload.
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "gone.jpg")

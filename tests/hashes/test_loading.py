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

from hashes.algorithms import MATCH_SIDE
from hashes.detect import QUERY_FEATURE_SIDE
from hashes.errors import (
    AnimationTooLong,
    CorruptImage,
    DecompressionBomb,
    FileTooLarge,
    ImageError,
    ImageTooSmall,
    UncheckableFormat,
    UnsupportedFormat,
)
from hashes.loading import (
    ALLOWED_FORMATS,
    DECODE_SIDE,
    DRAFT_SIDE,
    SNIFF_BYTES,
    image_kind,
    load_image,
)
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


def test_long_animation_keeps_the_frames_shown_longest():
    # Frame 5 is on screen for a minute, the others for 50 ms each.
    frames = [Image.new("RGB", (16, 16), colour) for colour in COLOURS]
    durations = [50] * len(COLOURS)
    durations[5] = 60_000
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=durations)

    loaded = load_image(data, max_frames=3)

    assert loaded.frame_count == len(COLOURS) and loaded.distinct_frames == len(COLOURS)
    shown = [frame.getpixel((8, 8)) for frame in loaded.frames]
    assert len(shown) == 3 and shown[0] == COLOURS[0]  # the first frame, always
    assert COLOURS[5] in shown  # then those shown longest


def test_a_banned_frame_shown_long_among_a_hundred_short_ones_is_kept():
    banned = photo("astronaut").resize((96, 96))
    fillers = [
        Image.new("RGB", (96, 96), (index * 2, 255 - index * 2, (index * 37) % 256))
        for index in range(99)
    ]
    durations = [20] * 100
    durations[1] = 60_000
    data = encode(
        fillers[0],
        "GIF",
        save_all=True,
        append_images=[banned, *fillers[1:]],
        duration=durations,
    )

    loaded = load_image(data)  # 32 frames at most, by default

    assert loaded.frame_count == 100 and len(loaded.frames) == 32
    kept = [np.asarray(frame, dtype=np.int16) for frame in loaded.frames]
    expected = np.asarray(load_image(data, max_frames=100).frames[1], dtype=np.int16)
    assert any(np.abs(frame - expected).mean() < 1 for frame in kept)


def test_repeated_frames_count_once_with_their_time_added():
    red, green, blue = (Image.new("RGB", (16, 16), c) for c in (RED, (0, 255, 0), (0, 0, 255)))
    # Green appears four times for 100 ms, blue once for 300 ms: green is kept.
    sequence = [red, green, blue, green, green, green]
    data = encode(
        sequence[0],
        "GIF",
        save_all=True,
        append_images=sequence[1:],
        duration=[100, 100, 300, 100, 100, 100],
    )

    loaded = load_image(data, max_frames=2)

    assert loaded.distinct_frames == 3
    assert [frame.getpixel((8, 8)) for frame in loaded.frames] == [RED, (0, 255, 0)]


def test_an_animation_over_its_decode_budget_is_refused_whole():
    # 16x16 frames: every frame together is over 4 x 256 pixels, one frame is not.
    assert len(COLOURS) * 16 * 16 > 4 * 256
    with pytest.raises(AnimationTooLong, match="every frame"):
        load_image(animation(), max_pixels=256)


def test_a_jpeg_cut_short_is_decoded_as_far_as_it_goes():
    original = encode(photo("chelsea"), "JPEG", quality=90)

    whole = load_image(original[:-2])  # the end marker cut off: browsers show it whole
    half = load_image(original[: len(original) // 2])

    assert "truncated" in whole.damage and not load_image(original).damage
    reference = np.asarray(load_image(original).frames[0], dtype=np.int16)
    assert np.abs(np.asarray(whole.frames[0], dtype=np.int16) - reference).mean() < 1
    top = np.asarray(half.frames[0], dtype=np.int16)[:40]
    assert half.damage and np.abs(top - reference[:40]).mean() < 1


def test_a_damaged_png_is_decoded_as_far_as_it_goes():
    data = bytearray(encode(photo("chelsea"), "PNG"))
    loaded = load_image(bytes(data[:20000]))

    assert loaded.damage and loaded.frames[0].size == photo("chelsea").size


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda: encode(photo("rocket"), "JPEG"), "JPEG"),
        (lambda: encode(photo("rocket"), "PNG"), "PNG"),
        (lambda: encode(photo("rocket"), "GIF"), "GIF"),
        (lambda: encode(photo("rocket"), "WEBP"), "WEBP"),
        (lambda: encode(photo("rocket"), "BMP"), "BMP"),
        (lambda: encode(photo("rocket"), "TIFF"), "TIFF"),
        (lambda: encode(photo("rocket").resize((64, 64)), "ICO"), "ICO"),
        (lambda: encode(photo("rocket"), "PPM"), "Netpbm"),
        (lambda: b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00mif1heic", "HEIF"),
        (lambda: b"\x00\x00\x00\x20ftypavif\x00\x00\x00\x00avifmif1miaf", "AVIF"),
        (lambda: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (lambda: b"<?xml version='1.0'?><!-- " + b"x" * 8000 + b" --><svg></svg>", "SVG"),
        (lambda: b"%PDF-1.7\n", None),
        (lambda: b"<!doctype html><html></html>", None),
        (lambda: b"hello", None),
        (lambda: b"", None),
        (lambda: b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom", None),  # a video
    ],
)
def test_image_kind_is_told_by_content(make, kind):
    assert image_kind(make()[:SNIFF_BYTES]) == kind


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
        UncheckableFormat,
    ),
    "pdf": (
        lambda tmp: b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n",
        {},
        UnsupportedFormat,
    ),
    "zip named .jpg": (lambda tmp: save_bytes(tmp / "a.jpg", zip_bytes()), {}, UnsupportedFormat),
    "ico": (lambda tmp: encode(photo("rocket").resize((64, 64)), "ICO"), {}, UncheckableFormat),
    "ppm": (lambda tmp: encode(photo("rocket"), "PPM"), {}, UncheckableFormat),
    "jpeg cut inside its header": (
        lambda tmp: encode(photo("chelsea"), "JPEG")[:300],
        {},
        CorruptImage,
    ),
    "png cut before its pixels": (
        lambda tmp: encode(photo("chelsea"), "PNG")[:60],
        {},
        CorruptImage,
    ),
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
        AnimationTooLong,
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
    errors = [
        UnsupportedFormat,
        UncheckableFormat,
        CorruptImage,
        DecompressionBomb,
        AnimationTooLong,
        FileTooLarge,
        ImageTooSmall,
    ]

    assert [error.code for error in errors] == [
        "unsupported_format",
        "uncheckable_format",
        "corrupt",
        "decompression_bomb",
        "animation_too_long",
        "file_too_large",
        "too_small",
    ]
    # Only what is no picture at all is let through unchecked.
    assert [error for error in errors if not error.uncheckable] == [
        UnsupportedFormat,
        ImageTooSmall,
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


def test_a_file_of_which_nothing_decodes_is_corrupt_whatever_its_palette():
    # A palette picture whose first colour is not grey, cut right after its IDAT header:
    # decoded as far as it goes, it is that one colour all over.
    image = Image.effect_noise((64, 64), 80).convert("P")
    palette = image.getpalette()
    image.putpalette([200, 30, 30, *palette[3:]])
    data = encode(image, "PNG")
    cut = data[: data.index(b"IDAT") + 4]

    with pytest.raises(CorruptImage, match="none of its picture decodes"):
        load_image(cut)


def large_photo(width: int = 4200) -> Image.Image:
    """A fixture photo scaled up to a camera's size."""
    image = photo("rocket")
    return image.resize((width, round(width * image.height / image.width)))


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


@pytest.mark.parametrize(
    ("size", "decoded"),
    [
        ((4200, 2800), (1050, 700)),  # 1/4: 1/8 would leave under DRAFT_SIDE across
        ((3000, 2000), (750, 500)),  # 1/4: 1/8 would leave 375 across
        ((1600, 1066), (800, 533)),  # 1/2
        ((1280, 853), (640, 427)),  # 1/2: twice DRAFT_SIDE
        ((1279, 852), (1279, 852)),  # under twice DRAFT_SIDE: as it is
        ((9000, 1200), (1125, 150)),  # 1/8: at most 1/8
        ((16000, 60), (4000, 15)),  # 1/4: the shorter side stays at least MIN_SIDE
    ],
)
def test_a_large_jpeg_upload_is_decoded_reduced(size, decoded):
    data = encode(photo("rocket").resize(size), "JPEG", quality=90)

    loaded = load_image(data)
    whole = load_image(data, full_size=True)

    assert loaded.frames[0].size == decoded and loaded.frames[0].mode == "RGB"
    assert (loaded.width, loaded.height) == (whole.width, whole.height) == size
    assert whole.frames[0].size == size
    # The same picture, smaller: the DCT scaling averages what the full decode shows.
    shrunk = whole.frames[0].resize(decoded, Image.Resampling.BOX)
    assert mean_difference(loaded.frames[0], shrunk) < 2


def test_jpeg_decoding_reduced_never_goes_under_what_the_checks_use():
    assert MATCH_SIDE <= DRAFT_SIDE <= DECODE_SIDE == QUERY_FEATURE_SIDE
    for width in range(2 * DRAFT_SIDE, 12 * DRAFT_SIDE, 997):
        data = encode(Image.new("RGB", (width, 300), WHITE), "JPEG")
        assert DRAFT_SIDE <= load_image(data).frames[0].width < 2 * DRAFT_SIDE


@pytest.mark.parametrize(
    ("orientation", "transpose"),
    [
        (3, Image.Transpose.ROTATE_180),
        (6, Image.Transpose.ROTATE_270),
        (8, Image.Transpose.ROTATE_90),
        (5, Image.Transpose.TRANSPOSE),
    ],
)
def test_a_large_exif_rotated_jpeg_comes_out_the_right_way_up(orientation, transpose):
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    stored = large_photo()
    data = encode(stored, "JPEG", quality=90, exif=exif)
    upright = stored.transpose(transpose)

    loaded = load_image(data)

    frame = loaded.frames[0]
    assert (loaded.width, loaded.height) == upright.size
    assert max(frame.size) == 1050
    assert mean_difference(frame, upright.resize(frame.size, Image.Resampling.BOX)) < 3
    # Not merely the right shape: the picture turned any other way differs.
    for wrong in (Image.Transpose.ROTATE_180, Image.Transpose.FLIP_LEFT_RIGHT):
        turned = upright.transpose(wrong).resize(frame.size, Image.Resampling.BOX)
        assert mean_difference(frame, turned) > 15


def test_the_pixel_limit_of_a_large_jpeg_is_its_full_size_however_decoded():
    data = encode(large_photo(), "JPEG", quality=90)
    width, height = Image.open(io.BytesIO(data)).size

    with pytest.raises(DecompressionBomb, match="over the limit"):
        load_image(data, max_pixels=width * height - 1)
    assert load_image(data, max_pixels=width * height).width == width


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_a_large_grey_or_cmyk_jpeg_is_decoded_reduced_to_rgb(mode):
    stored = large_photo().convert(mode)
    data = encode(stored, "JPEG", quality=90)

    loaded = load_image(data)
    whole = load_image(data, full_size=True).frames[0]

    frame = loaded.frames[0]
    assert frame.mode == "RGB" and max(frame.size) == 1050
    assert mean_difference(frame, whole.resize(frame.size, Image.Resampling.BOX)) < 2


def test_a_large_jpeg_cut_short_is_decoded_reduced_as_far_as_it_goes():
    data = encode(large_photo(), "JPEG", quality=90)
    reference = load_image(data).frames[0]

    half = load_image(data[: len(data) // 2])

    assert "truncated" in half.damage and half.frames[0].size == reference.size
    top = (0, 0, reference.width, 100)
    assert mean_difference(half.frames[0].crop(top), reference.crop(top)) < 1

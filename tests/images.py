"""Real photos and encoded images for tests, made once here and imported everywhere."""

import io
from pathlib import Path

from PIL import Image

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right")


def photo_path(name: str) -> Path:
    """Path of a committed fixture photo (a JPEG); see tests/fixtures/README.md."""
    return FIXTURES / f"{name}.jpg"


def photo(name: str) -> Image.Image:
    """A fixture photo decoded to RGB."""
    with Image.open(photo_path(name)) as image:
        return image.convert("RGB")


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    """``image`` saved in ``image_format`` (a PIL format name), as bytes."""
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def save(image: Image.Image, path: Path, image_format: str, **options: object) -> Path:
    """``image`` saved to ``path`` in ``image_format`` whatever the suffix; returns path."""
    path.write_bytes(encode(image, image_format, **options))
    return path

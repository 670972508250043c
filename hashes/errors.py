"""Why an uploaded file could not be turned into an image.

Each class has a short machine-readable ``code`` for storing with the rejected upload, and
its message says what is wrong and what the uploader can do about it. ``uncheckable`` says
whether the file may show a picture that could not be checked (fail closed: hold it),
rather than being no picture at all.
"""


class ImageError(Exception):
    code: str = "image_error"
    uncheckable: bool = True


class UnsupportedFormat(ImageError):
    """Not an image by its content."""

    code = "unsupported_format"
    uncheckable = False


class UncheckableFormat(ImageError):
    """An image in a format hashguard cannot decode (HEIF, AVIF, SVG, ...)."""

    code = "uncheckable_format"


class CorruptImage(ImageError):
    code = "corrupt"


class DecompressionBomb(ImageError):
    code = "decompression_bomb"


class AnimationTooLong(ImageError):
    code = "animation_too_long"


class FileTooLarge(ImageError):
    code = "file_too_large"


class ImageTooSmall(ImageError):
    """Under 8 pixels a side, or empty: too small to show a picture."""

    code = "too_small"
    uncheckable = False

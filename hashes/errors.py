"""Why an uploaded file could not be turned into an image.

Each class has a short machine-readable ``code`` for storing with the rejected upload, and
its message says what is wrong and what the uploader can do about it.
"""


class ImageError(Exception):
    code: str = "image_error"


class UnsupportedFormat(ImageError):
    code = "unsupported_format"


class CorruptImage(ImageError):
    code = "corrupt"


class DecompressionBomb(ImageError):
    code = "decompression_bomb"


class FileTooLarge(ImageError):
    code = "file_too_large"


class ImageTooSmall(ImageError):
    code = "too_small"

import pytest

from hashes.algorithms import Fingerprint, fingerprint_image
from hashes.loading import load_image
from tests.images import PHOTOS, photo_path


@pytest.fixture(scope="session")
def photo_fingerprints() -> dict[str, Fingerprint]:
    """Fingerprint of each fixture photo, loaded from its file as an upload would be."""
    return {name: fingerprint_image(load_image(photo_path(name)).frames[0]) for name in PHOTOS}

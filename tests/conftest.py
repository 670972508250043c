from pathlib import Path

import pytest


@pytest.fixture
def stores(settings, tmp_path: Path) -> Path:
    """Media, quarantine and reference directories of this test's own, created."""
    from moderation import files

    settings.HASHGUARD_MEDIA_DIR = tmp_path / "media"
    settings.HASHGUARD_QUARANTINE_DIR = tmp_path / "quarantine"
    settings.HASHGUARD_REFERENCE_DIR = tmp_path / "references"
    files.ensure_directories()
    return tmp_path

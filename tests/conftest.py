import os
import tempfile
from pathlib import Path

import pytest

# Before Django reads its settings: keep the test session's own state out of ./var, and
# queue to Celery's in-process broker (tests that need a real one start it themselves).
os.environ.setdefault("HASHGUARD_DATA_DIR", tempfile.mkdtemp(prefix="hashguard-tests-"))
os.environ.setdefault("CELERY_BROKER_URL", "memory://")


@pytest.fixture(autouse=True)
def session_data_dir(settings) -> None:
    """The test session's data folder in this process too: pytest-django reads the
    settings before this file sets the environment, which the processes tests start
    read."""
    settings.DATA_DIR = Path(os.environ["HASHGUARD_DATA_DIR"])


@pytest.fixture
def stores(settings, tmp_path: Path) -> Path:
    """Media, quarantine and reference directories of this test's own, created."""
    from moderation import files

    settings.HASHGUARD_MEDIA_DIR = tmp_path / "media"
    settings.HASHGUARD_QUARANTINE_DIR = tmp_path / "quarantine"
    settings.HASHGUARD_REFERENCE_DIR = tmp_path / "references"
    files.ensure_directories()
    return tmp_path

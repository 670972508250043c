"""hashes/ is a plain library: its public names, and nothing of Django or the app."""

import subprocess
import sys

import hashes
from tests.moderation.processes import ROOT


def test_every_public_name_is_there() -> None:
    assert sorted(hashes.__all__) == sorted(set(hashes.__all__))
    for name in hashes.__all__:
        assert getattr(hashes, name) is not None, name


def test_the_library_and_its_harness_load_without_django_or_plotting() -> None:
    code = (
        "import sys, hashes, hashes.evaluation.harness, hashes.evaluation.report\n"
        "loaded = [m for m in ('django', 'celery', 'moderation', 'matplotlib') "
        "if m in sys.modules]\n"
        "print(','.join(loaded))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""

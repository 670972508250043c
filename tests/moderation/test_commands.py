import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from PIL import Image

from moderation import services
from moderation.models import BannedFingerprint, Upload
from tests.images import encode, photo, save
from tests.moderation.processes import ROOT

pytestmark = pytest.mark.django_db


def test_ban_adds_each_image_and_reports_failures(stores: Path, capsys) -> None:
    good = save(photo("astronaut"), stores / "good.jpg", "JPEG")
    bad = stores / "bad.jpg"
    bad.write_text("<html></html>")
    with pytest.raises(CommandError, match="1 of 3 files were not banned"):
        call_command(
            "ban",
            str(good),
            str(bad),
            str(save(photo("rocket"), stores / "r.png", "PNG")),
            "--category",
            "scam",
            "--reason",
            "seen in a scam",
        )
    out, err = capsys.readouterr()
    assert "good.jpg: banned as #" in out
    assert "bad.jpg: not banned:" in err and "JPEG" in err
    assert BannedFingerprint.objects.count() == 2
    assert set(BannedFingerprint.objects.values_list("category", flat=True)) == {"scam"}


def test_uploads_lists_by_state_as_json(stores: Path, capsys) -> None:
    services.banned_add_image(
        data=(save(photo("astronaut"), stores / "b.jpg", "JPEG")).read_bytes()
    )
    for name, image in (("a.jpg", "astronaut"), ("c.jpg", "coffee")):
        path = save(photo(image), stores / "media" / name, "JPEG", quality=70)
        upload, _ = services.upload_register(path=path)
        services.upload_process(upload_id=upload.pk)
    call_command("uploads", "--json", "--state", "quarantined")
    rows = json.loads(capsys.readouterr().out)
    assert [(r["path"], r["state"]) for r in rows] == [("a.jpg", "quarantined")]
    assert rows[0]["matches"][0]["distances"]["pdq"] <= 31
    call_command("uploads")
    out = capsys.readouterr().out
    assert "clean" in out and "c.jpg" in out and "banned #" in out


def test_scan_records_a_backlog_without_waiting(stores: Path, capsys) -> None:
    backlog = stores / "media" / "old"
    backlog.mkdir()
    for index, name in enumerate(("coffee", "rocket", "chelsea")):
        save(photo(name), backlog / f"{index}.jpg", "JPEG")
    (backlog / "readme.txt").write_text("not an image: recorded as such")
    call_command("scan", str(backlog), "--no-wait")
    assert "4 files: 1 not_image, 3 pending" in capsys.readouterr().out
    assert sorted(Upload.objects.values_list("path", flat=True)) == [
        "old/0.jpg",
        "old/1.jpg",
        "old/2.jpg",
        "old/readme.txt",
    ]


def test_scan_refuses_directories_outside_the_media_tree(stores: Path) -> None:
    with pytest.raises(CommandError, match="outside the media directory"):
        call_command("scan", str(stores))


def test_rehash_recomputes_fingerprints_of_an_older_algorithm(stores: Path, capsys) -> None:
    rows = services.banned_add_image(data=encode(photo("rocket"), "JPEG"))
    pasted = services.banned_add_hashes(hashes={"phash": "0123456789abcdef"})
    original = rows[0].pdq
    BannedFingerprint.objects.update(pdq="0" * 64, algorithm_versions={"pdq": 0})
    call_command("rehash")
    assert "1 banned fingerprints recomputed" in capsys.readouterr().out
    rows[0].refresh_from_db()
    pasted.refresh_from_db()
    assert rows[0].pdq == original and rows[0].algorithm_versions["pdq"] == 1
    assert pasted.pdq == "0" * 64  # nothing to recompute it from
    call_command("rehash")
    assert "0 banned fingerprints recomputed" in capsys.readouterr().out


def test_a_bad_match_rule_stops_every_command(settings) -> None:
    settings.HASHGUARD_MATCH_RULE = {"groups": [{"pdqx": 3}]}
    with pytest.raises(SystemCheckError, match="hashguard.E001"):
        call_command("check")


def test_ban_warns_that_a_plain_image_catches_exact_copies_only(stores: Path, capsys) -> None:
    flat = save(Image.new("RGB", (300, 200), (40, 90, 160)), stores / "flat.png", "PNG")
    call_command("ban", str(flat))
    out, err = capsys.readouterr()
    assert "flat.png: banned as #" in out
    assert "too plain to match edited copies" in err and "Only exact copies" in err


def test_evaluate_writes_a_report_for_two_folders(tmp_path: Path, capsys) -> None:
    banned, innocent = tmp_path / "banned", tmp_path / "innocent"
    for folder, names in ((banned, ["astronaut"]), (innocent, ["coffee", "chelsea"])):
        folder.mkdir()
        for name in names:
            save(photo(name), folder / f"{name}.jpg", "JPEG")
    call_command(
        "evaluate", str(banned), str(innocent), "--out", str(tmp_path / "report"),
        "--edits", "mirror,crop_side_20", "--innocent-edits", "1",
    )  # fmt: skip
    out, _ = capsys.readouterr()
    assert "hashguard: recall 100.0%, false positives 0" in out
    assert "dHash exact (tutorial): recall 0.0%" in out
    assert (tmp_path / "report" / "report.md").exists()
    with pytest.raises(CommandError, match="Unknown edits"):
        call_command("evaluate", str(banned), str(innocent), "--edits", "sepia")


def check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_settings_pass_the_deployment_checks(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HASHGUARD_DATA_DIR": str(tmp_path),
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "moderation.example.com",
        "HASHGUARD_HTTPS": "true",
    }
    checked = check_deploy(env)
    assert checked.returncode == 0, checked.stderr + checked.stdout
    assert "no issues" in checked.stdout
    # Without HTTPS (the embedded default on 127.0.0.1) the same checks say what is missing.
    plain = check_deploy({**env, "HASHGUARD_HTTPS": "false"})
    assert plain.returncode != 0 and "SESSION_COOKIE_SECURE" in plain.stderr + plain.stdout

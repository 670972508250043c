"""The README's settings tables say the defaults the code has."""

import json
import os
import re
import subprocess
import sys

from hashes.detect import DetectConfig
from hashes.matching import DEFAULT_RULE_CONFIG
from tests.moderation.processes import ROOT

README = (ROOT / "README.md").read_text()
ROWS = re.findall(r"^\| (`[A-Z_]+`[^|]*) \| ([^|]+) \|", README, re.MULTILINE)


def rows_for(setting: str) -> list[tuple[str, str]]:
    return [(name, default.strip()) for name, default in ROWS if name.startswith(f"`{setting}`")]


def test_the_match_rule_row_is_the_default_rule() -> None:
    [(_, default)] = rows_for("HASHGUARD_MATCH_RULE")
    assert json.loads(default.strip("`")) == DEFAULT_RULE_CONFIG


def test_the_detection_rows_are_the_default_detection_settings() -> None:
    documented = {}
    for name, default in rows_for("HASHGUARD_DETECT"):
        keys = re.findall(r"`([a-z_]+)`", name)
        values = [json.loads(value.strip().strip("`")) for value in default.split(",")]
        documented.update(zip(keys, values, strict=True))
    assert documented == DetectConfig().__dict__


UNITS = {"MB": 1024 * 1024, "Mpx": 1_000_000}


def parse(value: str) -> object:
    value = value.strip().strip("`")
    if value in ("true", "false"):
        return value == "true"
    number = re.fullmatch(r"([\d.]+)(?: (MB|Mpx))?", value)
    if number is None:
        return value
    amount = float(number[1]) * UNITS.get(number[2] or "", 1)
    return int(amount) if amount.is_integer() else amount


def test_the_pipeline_rows_are_the_settings_defaults() -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HASHGUARD_", "CELERY_", "DJANGO_"))
    }
    env.update(DJANGO_SETTINGS_MODULE="config.settings", DJANGO_SECRET_KEY="readme")
    code = (
        "import json, django; django.setup(); from django.conf import settings as s\n"
        "print(json.dumps({k: getattr(s, k) for k in dir(s) if k.startswith('HASHGUARD_')"
        " and isinstance(getattr(s, k), (int, float, str, bool))}))"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    actual = json.loads(shown.stdout.splitlines()[-1])
    checked = 0
    for name, default in ROWS:
        names = re.findall(r"`(HASHGUARD_[A-Z_]+)`", name)
        values = default.split(",")
        if len(names) != len(values) or not all(n in actual for n in names):
            continue  # paths and JSON settings, checked elsewhere or relative to $DATA
        for setting, value in zip(names, values, strict=True):
            assert parse(value) == actual[setting], setting
            checked += 1
    assert checked >= 10

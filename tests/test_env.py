"""The environment parsers settings are read with."""

from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_float, env_int, env_json, env_list, env_path, env_str

PARSERS = [
    (env_str, "fallback", " text ", "text"),
    (env_int, 7, "12", 12),
    (env_float, 1.5, "0.25", 0.25),
    (env_bool, True, "off", False),
    (env_list, ["a"], "b, c,,", ["b", "c"]),
    (env_path, Path("/default"), "/srv/uploads", Path("/srv/uploads")),
    (env_json, None, '{"pdq": 31}', {"pdq": 31}),
]


@pytest.mark.parametrize(("parse", "default", "raw", "parsed"), PARSERS)
def test_each_parser_reads_a_value_and_takes_blank_as_unset(
    monkeypatch, parse, default, raw, parsed
) -> None:
    monkeypatch.delenv("HASHGUARD_X", raising=False)
    assert parse("HASHGUARD_X", default) == default
    for blank in ("", "   ", "\t"):
        monkeypatch.setenv("HASHGUARD_X", blank)
        assert parse("HASHGUARD_X", default) == default, repr(blank)
    monkeypatch.setenv("HASHGUARD_X", raw)
    assert parse("HASHGUARD_X", default) == parsed


@pytest.mark.parametrize(
    ("parse", "raw", "says"),
    [
        (env_int, "1.5", "a whole number"),
        (env_float, "fast", "a number"),
        (env_bool, "maybe", "true or false"),
        (env_json, "{pdq: 31}", "JSON"),
    ],
)
def test_a_malformed_value_says_what_it_must_be(monkeypatch, parse, raw, says) -> None:
    monkeypatch.setenv("HASHGUARD_X", raw)
    with pytest.raises(ImproperlyConfigured, match=f"HASHGUARD_X must be {says}"):
        parse("HASHGUARD_X", None)

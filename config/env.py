"""Typed readers for settings that come from the environment."""

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from django.core.exceptions import ImproperlyConfigured

T = TypeVar("T")


def _raw(name: str) -> str | None:
    """The variable's value, or None when it is unset or blank: every parser below treats
    an empty or all-space value as not set, so that `FOO=` in an env file means the
    default."""
    raw = os.environ.get(name)
    return None if raw is None or not raw.strip() else raw.strip()


def _parsed(name: str, default: T, parse: Callable[[str], T], what: str) -> T:
    raw = _raw(name)
    if raw is None:
        return default
    try:
        return parse(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be {what}, got {raw!r}") from None


def env_str(name: str, default: str) -> str:
    return _parsed(name, default, str, "text")


def env_int(name: str, default: int) -> int:
    return _parsed(name, default, int, "a whole number")


def env_float(name: str, default: float) -> float:
    return _parsed(name, default, float, "a number")


def _boolean(raw: str) -> bool:
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(raw)


def env_bool(name: str, default: bool) -> bool:
    return _parsed(name, default, _boolean, "true or false")


def env_list(name: str, default: list[str]) -> list[str]:
    return _parsed(
        name,
        default,
        lambda raw: [item.strip() for item in raw.split(",") if item.strip()],
        "a comma-separated list",
    )


def env_path(name: str, default: Path) -> Path:
    return _parsed(name, default, lambda raw: Path(raw).expanduser().resolve(), "a path")


def env_json(name: str, default: Any) -> Any:
    return _parsed(name, default, json.loads, "JSON")


def persistent_secret(path: Path) -> str:
    """A secret key kept in a 0600 file, made on first use, for the embedded default."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Write under a temporary name and link it into place, so that processes starting
    # together all end up with the one key that won.
    tmp = path.with_name(f"{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(50))
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()

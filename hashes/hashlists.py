"""Hash lists as trust-and-safety programmes exchange them: reading and writing.

Four formats, told apart by their content when asked for ``auto``:

- ``hma``: Meta's Hasher-Matcher-Actioner local file, one ``<signal_type> <hash>`` a line
  (``pdq <64 hex>``, ``md5 <32 hex>``);
- ``te-csv``: python-threatexchange's CSV, ``signal_type,signal_str,collab,category,tags``
  (tags separated by spaces), with or without that header;
- ``csv``: a CSV whose header names a hash column (``hash``, ``signal``, ``signal_str`` or
  ``value``) and an algorithm column (``algorithm``, ``signal_type`` or ``type``), and
  optionally ``category``, ``reason``, ``external_id`` (or ``id``), ``tags`` and
  ``deleted`` (or ``withdrawn``);
- ``pdq-hasher``: the PDQ reference hasher's output, ``hash,quality,filename``.

Reading yields an ``Entry`` per good line and a ``Problem`` per bad one, with its line
number, so that a caller imports what it can and reports the rest.
"""

import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from hashes.algorithms import ALGORITHMS, parse_hash

FORMATS = ("hma", "te-csv", "csv", "pdq-hasher")
# The hash kinds a list may carry: the perceptual ones, and file digests for exact copies.
DIGESTS = {"md5": 32, "sha256": 64}
KINDS = (*ALGORITHMS, *DIGESTS)
# Signal type names other tools use for the kinds hashguard knows.
_ALIASES = {"photo_md5": "md5", "pdq_hash": "pdq", "sha-256": "sha256"}
_HASH_COLUMNS = ("hash", "signal", "signal_str", "value")
_KIND_COLUMNS = ("algorithm", "signal_type", "type")
_KNOWN_COLUMNS = {
    *_HASH_COLUMNS,
    *_KIND_COLUMNS,
    "category",
    "reason",
    "external_id",
    "id",
    "tags",
    "deleted",
    "withdrawn",
    "quality",
}
_TE_HEADER = ["signal_type", "signal_str", "collab", "category", "tags"]
_TRUE = {"1", "true", "yes", "y", "deleted", "withdrawn"}


@dataclass(frozen=True)
class Entry:
    kind: str  # one of KINDS
    value: str  # lowercase hex
    quality: int | None = None  # PDQ's, where the list gives it
    category: str = ""
    tags: tuple[str, ...] = ()
    external_id: str = ""
    reason: str = ""
    deleted: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.value


@dataclass(frozen=True)
class Problem:
    line: int
    message: str
    # Set for a line of a signal type hashguard does not match (a video hash, say): it is
    # counted and skipped rather than an error in the list.
    unknown_kind: str = ""


@dataclass
class _Columns:
    hash: int
    kind: int
    others: dict[str, int] = field(default_factory=dict)


def detect_format(first_lines: list[str]) -> str:
    """The format of a list from its first lines; raises ValueError when none fits."""
    lines = [
        line.lstrip("\ufeff").strip()
        for line in first_lines
        if line.lstrip("\ufeff").strip() and not line.lstrip("\ufeff").startswith("#")
    ]
    if not lines:
        raise ValueError("The list is empty.")
    first = lines[0]
    if "," not in first:
        if len(first.split()) == 2:
            return "hma"
        raise ValueError(f"Cannot tell the list's format from its first line: {first[:80]!r}.")
    cells = [cell.strip().lower() for cell in next(csv.reader([first]))]
    if cells[: len(_TE_HEADER)] == _TE_HEADER:
        return "te-csv"
    if any(cell in _HASH_COLUMNS for cell in cells) and any(c in _KIND_COLUMNS for c in cells):
        return "csv"
    if len(cells) == 3 and len(cells[0]) == 64 and _quality(cells[1]) is not None:
        return "pdq-hasher"
    if len(cells) >= 2 and _kind(cells[0]) is not None:
        return "te-csv"
    raise ValueError(f"Cannot tell the list's format from its first line: {first[:80]!r}.")


def read(lines: Iterable[str], fmt: str) -> Iterator[Entry | Problem]:
    """Each line of a list in format ``fmt`` as an Entry, or a Problem saying what is
    wrong with it. Blank lines and lines starting with # are skipped."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown format {fmt!r}; expected one of {', '.join(FORMATS)}.")
    unmarked = (line.lstrip("\ufeff") if n == 0 else line for n, line in enumerate(lines))
    if fmt == "hma":
        yield from _read_hma(unmarked)
    else:
        yield from _read_csv(unmarked, fmt)


def _read_hma(lines: Iterable[str]) -> Iterator[Entry | Problem]:
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split()
        if len(parts) != 2:
            yield Problem(number, f"expected '<signal_type> <hash>', got {text[:80]!r}")
            continue
        yield _entry(number, parts[0], parts[1])


def _read_csv(lines: Iterable[str], fmt: str) -> Iterator[Entry | Problem]:
    columns: _Columns | None = None
    numbered = ((n, line) for n, line in enumerate(lines, start=1) if line.strip())
    for number, line in numbered:
        if line.startswith("#"):
            continue
        try:
            cells = next(csv.reader([line]))
        except (csv.Error, StopIteration) as exc:
            yield Problem(number, f"not a CSV line ({exc})")
            continue
        cells = [cell.strip() for cell in cells]
        if fmt == "csv" and columns is None:
            columns, problem = _header(number, cells)
            if problem is not None:
                yield problem
            if columns is None:
                return
            continue
        if fmt == "te-csv":
            if [cell.lower() for cell in cells[: len(_TE_HEADER)]] == _TE_HEADER:
                continue
            if len(cells) < 2:
                yield Problem(number, "expected signal_type,signal_str,collab,category,tags")
                continue
            yield _entry(
                number,
                cells[0],
                cells[1],
                category=cells[3] if len(cells) > 3 else "",
                tags=tuple(cells[4].split()) if len(cells) > 4 else (),
                external_id=cells[2] if len(cells) > 2 else "",
            )
        elif fmt == "pdq-hasher":
            quality = _quality(cells[1]) if len(cells) > 1 else None
            if quality is None:
                yield Problem(number, "expected hash,quality,filename with a quality of 0-100")
                continue
            name = cells[2] if len(cells) > 2 else ""
            yield _entry(number, "pdq", cells[0], quality=quality, external_id=name)
        else:
            assert columns is not None
            yield _csv_entry(number, cells, columns)


def _header(number: int, cells: list[str]) -> tuple[_Columns | None, Problem | None]:
    names = [cell.lower() for cell in cells]
    hash_column = next((names.index(n) for n in _HASH_COLUMNS if n in names), None)
    kind_column = next((names.index(n) for n in _KIND_COLUMNS if n in names), None)
    if hash_column is None or kind_column is None:
        return None, Problem(
            number,
            "the header must name a hash column (hash, signal, signal_str or value) and an "
            "algorithm column (algorithm, signal_type or type)",
        )
    others = {name: index for index, name in enumerate(names) if name in _KNOWN_COLUMNS}
    unknown = [cells[index] for index, name in enumerate(names) if name not in _KNOWN_COLUMNS]
    problem = (
        Problem(number, f"unknown columns left out: {', '.join(unknown)}") if unknown else None
    )
    return _Columns(hash_column, kind_column, others), problem


def _csv_entry(number: int, cells: list[str], columns: _Columns) -> Entry | Problem:
    def cell(*names: str) -> str:
        for name in names:
            index = columns.others.get(name)
            if index is not None and index < len(cells):
                return cells[index]
        return ""

    if max(columns.hash, columns.kind) >= len(cells):
        return Problem(number, "the line has fewer cells than the header")
    quality = cell("quality")
    return _entry(
        number,
        cells[columns.kind],
        cells[columns.hash],
        quality=_quality(quality),
        category=cell("category"),
        reason=cell("reason"),
        external_id=cell("external_id", "id"),
        tags=tuple(cell("tags").split()),
        deleted=cell("deleted", "withdrawn").lower() in _TRUE,
    )


def _quality(text: str) -> int | None:
    """PDQ's quality, 0 to 100, or None when the text is not one."""
    if re.fullmatch(r"[0-9]{1,3}", text.strip()) and int(text) <= 100:
        return int(text)
    return None


def _clean(text: str) -> str:
    """A text field as stored: no NUL (which databases refuse), on one line."""
    return " ".join(text.replace("\x00", "").split())


def _kind(name: str) -> str | None:
    name = name.strip().lower()
    name = _ALIASES.get(name, name)
    return name if name in KINDS else None


def _entry(
    number: int,
    kind_name: str,
    value: str,
    *,
    quality: int | None = None,
    category: str = "",
    tags: tuple[str, ...] = (),
    external_id: str = "",
    reason: str = "",
    deleted: bool = False,
) -> Entry | Problem:
    kind = _kind(kind_name)
    if kind is None:
        return Problem(
            number,
            f"signal type {kind_name[:40]!r} is not one hashguard matches; skipped",
            unknown_kind=kind_name.strip().lower()[:40],
        )
    try:
        if kind in DIGESTS:
            code = value.strip().lower()
            if len(code) != DIGESTS[kind] or any(c not in "0123456789abcdef" for c in code):
                raise ValueError(f"a {kind} digest is {DIGESTS[kind]} hex digits")
        else:
            code = parse_hash(kind, value[:200])
    except ValueError as exc:
        return Problem(number, f"{kind}: {exc}")
    return Entry(
        kind,
        code,
        quality=quality,
        category=_clean(category)[:64],
        tags=tuple(_clean(tag)[:64] for tag in tags)[:32],
        external_id=_clean(external_id)[:255],
        reason=_clean(reason)[:1000],
        deleted=deleted,
    )


def parse_signal(kind_name: str, value: str, *, quality: int | None = None) -> Entry:
    """One hash given on its own (an API's ``signal_type`` and ``signal``), checked as a
    list's line is; raises ValueError saying what is wrong."""
    parsed = _entry(0, kind_name, value, quality=quality)
    if isinstance(parsed, Problem):
        if parsed.unknown_kind:
            raise ValueError(
                f"Unknown signal type {kind_name[:40]!r}; expected one of {', '.join(KINDS)}."
            )
        raise ValueError(parsed.message)
    return parsed


def write(entries: Iterable[Entry], fmt: str) -> Iterator[str]:
    """Lines (with their newline) of a list in format ``fmt``; entries a format cannot
    carry (a pHash in an HMA file, say) are left out."""
    if fmt == "hma":
        for entry in entries:
            if entry.kind in ("pdq", "md5"):
                yield f"{entry.kind} {entry.value}\n"
    elif fmt == "te-csv":
        yield ",".join(_TE_HEADER) + "\n"
        for entry in entries:
            yield _csv_line(
                [entry.kind, entry.value, entry.external_id, entry.category, " ".join(entry.tags)]
            )
    elif fmt == "csv":
        yield "algorithm,hash,quality,category,reason,external_id,tags\n"
        for entry in entries:
            quality = "" if entry.quality is None else str(entry.quality)
            yield _csv_line(
                [
                    entry.kind,
                    entry.value,
                    quality,
                    entry.category,
                    entry.reason,
                    entry.external_id,
                    " ".join(entry.tags),
                ]
            )
    elif fmt == "pdq-hasher":
        for entry in entries:
            if entry.kind == "pdq":
                given = 100 if entry.quality is None else entry.quality
                yield _csv_line([entry.value, str(given), entry.external_id])
    else:
        raise ValueError(f"Unknown format {fmt!r}; expected one of {', '.join(FORMATS)}.")


def _csv_line(cells: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([_clean(cell) for cell in cells])
    return buffer.getvalue()

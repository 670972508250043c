"""Objects saved to a file with their numpy arrays apart, and loaded by mapping the file.

``save`` pickles an object with its arrays' memory out of band (pickle protocol 5), each
array at a page boundary after the pickle. ``load`` maps the file copy-on-write and hands
the pickle views of the mapping: the arrays are the file's pages, read from the page
cache, so that every process that loads the same file shares one copy of them however
many load it. A process that changes an array (a code added, a row marked dead) gets a
private copy of only the pages it writes; the file is never written.

Loading unpickles: only files this program wrote may be loaded.
"""

import mmap
import os
import pickle
import struct
from pathlib import Path

_MAGIC = b"hashguard snapshot 1\n"
_PAGE = mmap.PAGESIZE
_COUNTS = struct.Struct("<QQ")  # the pickle's length, the number of arrays
_SPAN = struct.Struct("<QQ")  # an array's offset and length


class SnapshotError(ValueError):
    """The file is not a whole snapshot."""


def save(value: object, path: Path) -> None:
    """Write ``value`` to ``path`` whole or not at all: to a file beside it, flushed to
    the disk, then renamed over it."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    raws = [buffer.raw() for buffer in buffers]
    table = len(_MAGIC) + _COUNTS.size + _SPAN.size * len(raws)
    spans = []
    at = table + len(head)
    for raw in raws:
        at = _page_aligned(at)
        spans.append((at, raw.nbytes))
        at += raw.nbytes
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(part, "wb") as out:
            out.write(_MAGIC)
            out.write(_COUNTS.pack(len(head), len(raws)))
            for span in spans:
                out.write(_SPAN.pack(*span))
            out.write(head)
            for (offset, _), raw in zip(spans, raws, strict=True):
                out.seek(offset)
                out.write(raw)
            out.truncate(at)  # an array of no bytes at the end still ends inside the file
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    _sync_directory(path.parent)


def load(path: Path) -> object:
    """The value saved in ``path``, its arrays mapped from the file copy-on-write.
    SnapshotError when the file is not a whole snapshot; OSError when it cannot be read."""
    with open(path, "rb") as source:
        size = os.fstat(source.fileno()).st_size
        if size < len(_MAGIC) + _COUNTS.size:
            raise SnapshotError(f"{path} is too short to be a snapshot")
        mapped = mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_COPY)
    view = memoryview(mapped)
    if view[: len(_MAGIC)] != _MAGIC:
        raise SnapshotError(f"{path} is not a snapshot")
    at = len(_MAGIC)
    head_length, count = _COUNTS.unpack_from(view, at)
    at += _COUNTS.size
    if at + _SPAN.size * count + head_length > size:
        raise SnapshotError(f"{path} is cut short")
    spans = [_SPAN.unpack_from(view, at + _SPAN.size * number) for number in range(count)]
    at += _SPAN.size * count
    if any(offset + length > size for offset, length in spans):
        raise SnapshotError(f"{path} is cut short")
    try:
        return pickle.loads(
            view[at : at + head_length],
            buffers=[view[offset : offset + length] for offset, length in spans],
        )
    except (pickle.UnpicklingError, EOFError) as exc:
        raise SnapshotError(f"{path} is damaged: {exc}") from exc


def _page_aligned(offset: int) -> int:
    return -(-offset // _PAGE) * _PAGE


def _sync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` last through a power cut."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)

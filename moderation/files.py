"""Where files live, and moving them between the media tree and the protected stores.

Paths in the database are relative to their store, so every machine may mount the
stores wherever its settings say. A relative path is kept as the exact bytes of the file
name, so that no name is lost, and shown with undecodable bytes escaped.

Every operation walks from the store's root one component at a time, with directory file
descriptors and ``O_NOFOLLOW``: no symlink anywhere on the way, in the last component or
in a directory swapped for one after the file was recorded, can lead outside the store.
"""

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from django.conf import settings

from hashes.loading import SNIFF_BYTES

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Errors that opening a path component with O_NOFOLLOW gives when it is a symlink.
_SYMLINK_ERRNOS = (errno.ELOOP, errno.ENOTDIR)


class UnsafePath(Exception):
    """A path that is a symlink, not a regular file, or outside its store."""


class FileChangedError(OSError):
    """The file at a path was replaced by another while hashguard worked on it."""


def media_dir() -> Path:
    return Path(settings.HASHGUARD_MEDIA_DIR)


def quarantine_dir() -> Path:
    return Path(settings.HASHGUARD_QUARANTINE_DIR)


def reference_dir() -> Path:
    return Path(settings.HASHGUARD_REFERENCE_DIR)


def ensure_directories() -> None:
    """Make the stores; those only hashguard reads are private to the service user."""
    media_dir().mkdir(parents=True, exist_ok=True)
    for protected in (quarantine_dir(), reference_dir()):
        protected.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(protected, 0o700)


# --- relative paths ---------------------------------------------------------------------


def relative_to_store(path: str | bytes | os.PathLike, store: Path) -> bytes:
    """The path inside store as bytes, refusing anything that would lead out of it."""
    absolute = os.path.abspath(os.fsencode(path))
    root = os.path.abspath(os.fsencode(store))
    prefix = root.rstrip(b"/") + b"/"
    if not absolute.startswith(prefix) or absolute == root:
        raise UnsafePath(f"{display(absolute)} is not inside {store}")
    return absolute[len(prefix) :]


def display(relative: bytes) -> str:
    """A path as text: bytes that are not UTF-8 are shown as \\xNN escapes."""
    return relative.decode("utf-8", errors="backslashreplace")


def _parts(relative: bytes) -> list[bytes]:
    parts = relative.split(b"/")
    if not relative or any(part in (b"", b".", b"..") for part in parts):
        raise UnsafePath(f"{display(relative)!r} is not a plain path inside a store")
    return parts


@contextlib.contextmanager
def _parent(
    store: Path, relative: bytes, *, create: bool = False, private: bool = False
) -> Iterator[tuple[int, bytes]]:
    """An open descriptor of the directory holding relative, and the file's name in it.

    Each directory on the way is opened from the one before with O_NOFOLLOW; with create,
    missing ones are made (0700 when private).
    """
    parts = _parts(relative)
    if create:
        store.mkdir(parents=True, exist_ok=True, mode=0o700 if private else 0o777)
    fd = os.open(store, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            child = _child_directory(fd, part, relative, create=create, private=private)
            os.close(fd)
            fd = child
        yield fd, parts[-1]
    finally:
        os.close(fd)


def _child_directory(fd: int, part: bytes, relative: bytes, *, create: bool, private: bool) -> int:
    """Open the directory part inside fd, never through a symlink."""
    try:
        try:
            return os.open(part, _DIRECTORY_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o700 if private else 0o777, dir_fd=fd)
            return os.open(part, _DIRECTORY_FLAGS, dir_fd=fd)
    except OSError as exc:
        if exc.errno in _SYMLINK_ERRNOS:
            raise UnsafePath(
                f"{display(relative)}: {display(part)} is a symlink or not a directory; "
                "hashguard never follows symlinks"
            ) from None
        raise


def _open_regular_at(dir_fd: int, name: bytes, relative: bytes) -> BinaryIO:
    """Open a regular file for reading, refusing symlinks, FIFOs and devices."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(
                f"{display(relative)} is a symlink; hashguard never follows symlinks"
            ) from None
        raise
    handle = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        handle.close()
        raise UnsafePath(f"{display(relative)} is not a regular file")
    return handle


@contextlib.contextmanager
def open_directory(store: Path, relative: bytes) -> Iterator[int]:
    """A descriptor of a directory inside store (b"" for the store itself)."""
    if not relative:
        fd = os.open(store, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)
        return
    with _parent(store, relative) as (dir_fd, name):
        fd = _child_directory(dir_fd, name, relative, create=False, private=False)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_regular(store: Path, relative: bytes) -> Iterator[BinaryIO]:
    with _parent(store, relative) as (dir_fd, name):
        handle = _open_regular_at(dir_fd, name, relative)
    with handle:
        yield handle


# --- reading ------------------------------------------------------------------------------


def lstat(store: Path, relative: bytes) -> os.stat_result:
    with _parent(store, relative) as (dir_fd, name):
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


def exists(store: Path, relative: bytes) -> bool:
    try:
        lstat(store, relative)
    except FileNotFoundError:
        return False
    return True


def read_regular_file(store: Path, relative: bytes, *, max_bytes: int) -> bytes:
    """The file's bytes, or its first max_bytes + 1 when it is larger, so the image
    loader reports it as too large without reading all of it."""
    with open_regular(store, relative) as handle:
        # As much as the file holds: a read of the limit would reserve that much memory
        # for every file, however small.
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(min(size, max_bytes) + 1)
        if size < len(data) <= max_bytes:  # it has grown since
            data += handle.read(max_bytes + 1 - len(data))
        return data


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_of_file(store: Path, relative: bytes) -> tuple[str, int, bytes]:
    """sha256, size and first bytes of a regular file, read in blocks."""
    digest = hashlib.sha256()
    size = 0
    head = b""
    with open_regular(store, relative) as handle:
        while block := handle.read(1 << 20):
            if not head:
                head = block[:SNIFF_BYTES]
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size, head


# --- writing ------------------------------------------------------------------------------


def move_file(
    source_store: Path,
    source: bytes,
    destination_store: Path,
    destination: bytes,
    *,
    private: bool,
    mode: int | None = None,
) -> None:
    """Move a regular file, atomically where the two stores share a filesystem.

    The file is linked at the destination, or copied to a temporary name beside it,
    flushed and linked, and only then removed from the source: a crash leaves at worst
    the same file in both places, which a second call finishes moving. A private move
    leaves the file readable by the service user only; otherwise mode, when given, is
    restored. A file with other hard links, or owned by another user, is copied, so that
    neither its other names nor its mode are touched. Never overwrites a different file.
    """
    with (
        _parent(source_store, source) as (source_fd, source_name),
        _parent(destination_store, destination, create=True, private=private) as (
            target_fd,
            target_name,
        ),
    ):
        info = os.stat(source_name, dir_fd=source_fd, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath(f"{display(source)} is not a regular file")
        new_mode = 0o600 if private else (mode if mode is not None else stat.S_IMODE(info.st_mode))
        try:
            existing = os.stat(target_name, dir_fd=target_fd, follow_symlinks=False)
        except FileNotFoundError:
            _place(source_fd, source_name, info, target_fd, target_name, new_mode)
        else:
            if not _same_file(source_fd, source_name, info, target_fd, target_name, existing):
                raise FileExistsError(f"{display(destination)} already exists")
        try:
            # A file swapped in at the source name meanwhile is not this one: leave it.
            now = os.stat(source_name, dir_fd=source_fd, follow_symlinks=False)
            if (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
                raise FileChangedError(f"{display(source)} was replaced while it was moved")
            os.unlink(source_name, dir_fd=source_fd)
        except OSError:
            # Leave the file where it was rather than in two places.
            os.unlink(target_name, dir_fd=target_fd)
            raise
        # Both directories, so that after a power cut the file is not back where it was.
        os.fsync(target_fd)
        os.fsync(source_fd)


def _place(
    source_fd: int,
    source_name: bytes,
    info: os.stat_result,
    target_fd: int,
    target_name: bytes,
    mode: int,
) -> None:
    if info.st_nlink == 1 and info.st_uid == os.geteuid():
        try:
            # link + unlink rather than rename: rename would silently replace a file
            # that appeared at the destination in the meantime.
            os.link(
                source_name,
                target_name,
                src_dir_fd=source_fd,
                dst_dir_fd=target_fd,
                follow_symlinks=False,
            )
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP):
                raise
        else:
            linked = os.stat(target_name, dir_fd=target_fd, follow_symlinks=False)
            if linked.st_ino != info.st_ino:
                os.unlink(target_name, dir_fd=target_fd)
                raise FileChangedError(f"{display(source_name)} was replaced while it was moved")
            _chmod_at(target_fd, target_name, mode)
            return
    _copy_then_link(source_fd, source_name, target_fd, target_name, mode=mode, inode=info.st_ino)


def _same_file(
    source_fd: int,
    source_name: bytes,
    info: os.stat_result,
    target_fd: int,
    target_name: bytes,
    other: os.stat_result,
) -> bool:
    """Whether the target already is the source: linked, or copied whole, by an earlier move."""
    if os.path.samestat(info, other):
        return True
    if not stat.S_ISREG(other.st_mode) or other.st_size != info.st_size:
        return False
    return _digest_at(source_fd, source_name) == _digest_at(target_fd, target_name)


def _digest_at(dir_fd: int, name: bytes) -> str:
    digest = hashlib.sha256()
    with _open_regular_at(dir_fd, name, name) as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _chmod_at(dir_fd: int, name: bytes, mode: int) -> None:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _copy_then_link(
    source_fd: int,
    source_name: bytes,
    target_fd: int,
    target_name: bytes,
    *,
    mode: int,
    inode: int,
) -> None:
    """Copy under a fresh temporary name beside the target, flushed, then link it into
    place; the temporary name is made with O_EXCL, so nothing planted there is used."""
    temporary, fd = _temporary(target_fd)
    try:
        with os.fdopen(fd, "wb") as target:
            os.fchmod(target.fileno(), mode)
            with _open_regular_at(source_fd, source_name, source_name) as origin:
                if os.fstat(origin.fileno()).st_ino != inode:
                    raise FileChangedError(
                        f"{display(source_name)} was replaced while it was moved"
                    )
                shutil.copyfileobj(origin, target, 1 << 20)
            target.flush()
            os.fsync(target.fileno())
        os.link(temporary, target_name, src_dir_fd=target_fd, dst_dir_fd=target_fd)
    finally:
        os.unlink(temporary, dir_fd=target_fd)


def _temporary(dir_fd: int) -> tuple[bytes, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    name = b".hashguard-%s.partial" % secrets.token_hex(8).encode()
    return name, os.open(name, flags, 0o600, dir_fd=dir_fd)


def write_private(store: Path, relative: bytes, data: bytes | Iterable[bytes]) -> None:
    """Write a file readable by the service user only, unless it is already there;
    ``data`` may come as chunks."""
    with _parent(store, relative, create=True, private=True) as (dir_fd, name):
        temporary, fd = _temporary(dir_fd)
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in [data] if isinstance(data, bytes) else data:
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        finally:
            os.unlink(temporary, dir_fd=dir_fd)


def unlink(store: Path, relative: bytes) -> None:
    with _parent(store, relative) as (dir_fd, name), contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)

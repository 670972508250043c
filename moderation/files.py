"""Where files live, and moving them between the media tree and the protected stores.

Paths in the database are relative to their store, so every machine may mount the
stores wherever its settings say. Nothing here follows a symlink.
"""

import errno
import hashlib
import os
import shutil
import stat
from pathlib import Path
from typing import BinaryIO

from django.conf import settings


class UnsafePath(Exception):
    """A path that is a symlink, not a regular file, or outside its store."""


def media_dir() -> Path:
    return Path(settings.HASHGUARD_MEDIA_DIR)


def quarantine_dir() -> Path:
    return Path(settings.HASHGUARD_QUARANTINE_DIR)


def reference_dir() -> Path:
    return Path(settings.HASHGUARD_REFERENCE_DIR)


def ensure_directories() -> None:
    media_dir().mkdir(parents=True, exist_ok=True)
    for protected in (quarantine_dir(), reference_dir()):
        protected.mkdir(parents=True, exist_ok=True)
        os.chmod(protected, 0o700)


def relative_to_store(path: Path, store: Path) -> str:
    """The path inside store, refusing anything that would lead out of it."""
    absolute = Path(os.path.abspath(path))
    root = Path(os.path.abspath(store))
    if not absolute.is_relative_to(root) or absolute == root:
        raise UnsafePath(f"{path} is not inside {store}")
    return absolute.relative_to(root).as_posix()


def in_store(relative: str, store: Path) -> Path:
    """The absolute path of a stored relative path, checked to stay inside the store."""
    candidate = Path(os.path.abspath(store / relative))
    relative_to_store(candidate, store)
    return candidate


def _open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading, refusing symlinks, FIFOs and devices."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"{path} is a symlink; hashguard never follows symlinks") from None
        raise
    handle = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        handle.close()
        raise UnsafePath(f"{path} is not a regular file")
    return handle


def read_regular_file(path: Path, *, max_bytes: int) -> bytes:
    """The file's bytes, or its first max_bytes + 1 when it is larger, so the image
    loader reports it as too large without reading all of it."""
    with _open_regular(path) as handle:
        return handle.read(max_bytes + 1)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_of_file(path: Path) -> tuple[str, int]:
    """sha256 and size of a regular file, read in blocks, never following a symlink."""
    digest = hashlib.sha256()
    size = 0
    with _open_regular(path) as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def move_file(source: Path, destination: Path, *, private: bool) -> None:
    """Move a regular file, atomically where the two paths share a filesystem.

    The file is linked at the destination, or across filesystems copied to a temporary
    name beside it, flushed and linked, and only then removed from the source: a crash
    leaves at worst the same file in both places, which a second call finishes moving.
    A private move leaves the file readable by the service user only; a file owned by
    another user is copied for that, since its mode cannot be changed. Never overwrites
    a different file.
    """
    info = os.lstat(source)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePath(f"{source} is not a regular file")
    destination.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if private else 0o777)
    if os.path.lexists(destination):
        if not _same_file(source, info, destination):
            raise FileExistsError(f"{destination} already exists")
    elif private and info.st_uid != os.geteuid():
        _copy_then_link(source, destination, mode=0o600)
    else:
        try:
            # link + unlink rather than rename: rename would silently replace a file
            # that appeared at the destination in the meantime.
            os.link(source, destination, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP):
                raise
            mode = 0o600 if private else stat.S_IMODE(info.st_mode)
            _copy_then_link(source, destination, mode=mode)
        else:
            if private:
                _chmod(destination, 0o600)
    try:
        os.unlink(source)
    except OSError:
        os.unlink(destination)  # leave the file where it was rather than in two places
        raise
    _fsync_directory(destination.parent)


def _same_file(source: Path, info: os.stat_result, destination: Path) -> bool:
    """Whether destination already is source: linked, or copied whole, by an earlier move."""
    other = os.lstat(destination)
    if os.path.samestat(info, other):
        return True
    return (
        stat.S_ISREG(other.st_mode)
        and other.st_size == info.st_size
        and sha256_of_file(source) == sha256_of_file(destination)
    )


def _chmod(path: Path, mode: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _copy_then_link(source: Path, destination: Path, *, mode: int) -> None:
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.partial")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    fd = os.open(temporary, flags, 0o600)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as target:
            src_fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(src_fd, "rb") as origin:
                shutil.copyfileobj(origin, target, 1 << 20)
            target.flush()
            os.fsync(target.fileno())
        os.link(temporary, destination)
    finally:
        os.unlink(temporary)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Write a file readable by the service user only, unless it is already there."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.path.lexists(path):
        return
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(temporary)

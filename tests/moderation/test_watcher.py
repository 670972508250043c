"""The watcher loop, run in a thread and stopped with its event, on real files."""

import os
import resource
import threading
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from moderation.models import Upload
from moderation.watcher import MediaWatcher, ObserverDied, iter_files
from tests.images import encode, photo, save
from tests.moderation.processes import wait_for


def test_every_file_is_listed_whatever_its_name(tmp_path: Path) -> None:
    names = [
        b"a.jpg",
        b"sub/dir/A.PNG",
        b".hidden.jpg",
        b"sub/.cache/a.jpg",
        b"~lock.jpg",
        b"a.jpg.part",
        b"notes.txt",
        b"noextension",
        b"x.jfif",
        b"caf\xe9.jpg",
    ]
    for name in names:
        path = os.path.join(os.fsencode(tmp_path), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(b"x")
    (tmp_path / "sub" / "link.jpg").symlink_to(tmp_path / "a.jpg")
    (tmp_path / "linked-dir").symlink_to(tmp_path / "sub")

    listed = {relative for relative, _ in iter_files(tmp_path)}

    # Symlinks are listed for the caller to record as such, never followed.
    assert listed == {*names, b"sub/link.jpg", b"linked-dir"}
    assert {relative for relative, _ in iter_files(tmp_path, b"sub")} == {
        b"sub/dir/A.PNG",
        b"sub/.cache/a.jpg",
        b"sub/link.jpg",
    }


def test_paths_longer_than_the_system_allows_are_listed(tmp_path: Path) -> None:
    # PATH_MAX is 4096 bytes: walking by directory descriptors reaches past it.
    deep = os.fsencode(tmp_path)
    parts = [b"d" * 200] * 25
    fd = os.open(deep, os.O_RDONLY)
    for part in parts:
        os.mkdir(part, dir_fd=fd)
        child = os.open(part, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    with open(os.open(b"deep.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as handle:
        handle.write(b"x")
    os.close(fd)

    [(relative, _)] = list(iter_files(tmp_path))

    assert len(relative) > 4096
    assert relative == b"/".join([*parts, b"deep.jpg"])


class Running:
    def __init__(self, media: Path, **options: float) -> None:
        self.stop = threading.Event()
        self.watcher = MediaWatcher(
            media,
            stop=self.stop,
            stable_seconds=0.3,
            tick_seconds=0.05,
            **options,
        )
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        try:
            self.watcher.run()
        except BaseException as exc:
            self.errors.append(exc)

    def __enter__(self) -> MediaWatcher:
        self.thread.start()
        assert self.watcher.ready.wait(15), "the watcher did not start"
        return self.watcher

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "the watcher did not stop when asked"
        assert not self.errors, self.errors


def recorded() -> set[str]:
    return set(Upload.objects.values_list("path", flat=True))


@pytest.mark.django_db(transaction=True)
def test_watcher_records_new_images_however_they_arrive(stores: Path, tmp_path: Path) -> None:
    media = stores / "media"
    save(photo("coffee"), media / "existing.jpg", "JPEG")  # there before the watcher starts
    with Running(media) as watcher:
        save(photo("rocket"), media / "copied.jpg", "JPEG")
        save(photo("chelsea"), media / ".upload-123.tmp", "PNG")
        os.rename(media / ".upload-123.tmp", media / "renamed.png")
        outside = tmp_path / "outside.webp"
        save(photo("astronaut"), outside, "WEBP")
        os.rename(outside, media / "moved-in.webp")
        staging = tmp_path / "batch"
        staging.mkdir()
        save(photo("coffee"), staging / "in-dir.jpg", "JPEG", quality=40)
        os.rename(staging, media / "batch")  # a whole directory moved in
        (media / "new" / "deep").mkdir(parents=True)
        save(photo("rocket"), media / "new" / "deep" / "nested.jpg", "JPEG", quality=50)
        (media / "notes.txt").write_text("not an image")
        save(photo("rocket"), media / ".hidden.jpg", "JPEG")
        save(photo("rocket"), media / "~x.jpg", "JPEG")
        save(photo("coffee"), media / "x.jfif", "JPEG")
        save(photo("coffee"), media / "noextension", "PNG")
        (media / ".cache").mkdir()
        save(photo("chelsea"), media / ".cache" / "a.gif", "GIF")
        (media / "link.jpg").symlink_to(outside)
        save(photo("chelsea"), media / os.fsdecode(b"caf\xe9.jpg"), "JPEG")  # not UTF-8
        long_dir = media / "/".join(["d" * 200] * 6)
        long_dir.mkdir(parents=True)
        save(photo("rocket"), long_dir / "long.jpg", "JPEG")
        long_path = "/".join(["d" * 200] * 6) + "/long.jpg"
        expected = {
            "existing.jpg",
            "copied.jpg",
            "renamed.png",
            "moved-in.webp",
            "batch/in-dir.jpg",
            "new/deep/nested.jpg",
            "notes.txt",
            ".hidden.jpg",
            "~x.jpg",
            "x.jfif",
            "noextension",
            ".cache/a.gif",
            "link.jpg",
            "caf\\xe9.jpg",
            long_path,
        }
        wait_for(lambda: live() >= expected, timeout=20, what="all files recorded")
        wait_for(watcher.idle, timeout=20, what="nothing left to record")
    assert live() == expected
    live_uploads = Upload.objects.exclude(state=Upload.State.SUPERSEDED)
    states = dict(live_uploads.values_list("path", "state"))
    assert states.pop("link.jpg") == Upload.State.ERROR  # recorded, never followed
    assert states.pop("notes.txt") == Upload.State.NOT_IMAGE  # recorded at once, left alone
    assert set(states.values()) == {Upload.State.PENDING}
    assert Upload.objects.filter(queued_at__isnull=False).count() == len(states)
    odd = Upload.objects.get(path="caf\\xe9.jpg")
    assert odd.relative_path() == b"caf\xe9.jpg"  # the exact name, for the worker
    # A temporary name seen before its rename is superseded by the renamed file.
    assert (
        not Upload.objects.filter(path=".upload-123.tmp")
        .exclude(state=Upload.State.SUPERSEDED)
        .exists()
    )


def live() -> set[str]:
    return set(Upload.objects.exclude(state=Upload.State.SUPERSEDED).values_list("path", flat=True))


@pytest.mark.django_db(transaction=True)
def test_watcher_waits_until_a_slow_write_is_finished(stores: Path) -> None:
    media = stores / "media"
    data = encode(photo("astronaut"), "JPEG")
    with Running(media):
        with open(media / "slow.jpg", "wb") as handle:
            for start in range(0, len(data), 4096):
                handle.write(data[start : start + 4096])
                handle.flush()
                time.sleep(0.1)
                assert not recorded(), "recorded before the writer finished"
        upload = wait_for(lambda: Upload.objects.filter(path="slow.jpg").first(), timeout=10)
    assert upload.size == len(data)


@pytest.mark.django_db(transaction=True)
def test_a_restart_does_not_record_files_again(stores: Path) -> None:
    media = stores / "media"
    save(photo("coffee"), media / "a.jpg", "JPEG")
    with Running(media):
        wait_for(lambda: recorded() == {"a.jpg"}, timeout=10)
    with Running(media) as watcher:
        assert watcher.scan() == 0
    assert Upload.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_file_replaced_while_no_watcher_ran_is_recorded_again(stores: Path) -> None:
    media = stores / "media"
    path = save(photo("coffee"), media / "a.bmp", "BMP")
    with Running(media):
        wait_for(lambda: recorded() == {"a.bmp"}, timeout=10)
    # Same size, older mtime kept (as cp -p or rsync -a do): only the inode tells.
    before = path.stat()
    replacement = save(photo("coffee").transpose(0), media / ".incoming", "BMP")
    assert replacement.stat().st_size == before.st_size
    os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.rename(replacement, path)
    with Running(media):
        wait_for(lambda: Upload.objects.count() == 2, timeout=10, what="the replacement")


@pytest.mark.django_db(transaction=True)
def test_a_scan_finds_files_no_event_announced(stores: Path) -> None:
    media = stores / "media"
    save(photo("rocket"), media / "late.jpg", "JPEG")
    watcher = MediaWatcher(media, stop=threading.Event(), stable_seconds=0.2)
    assert watcher.scan() == 1
    watcher.settle()  # first sight: size and mtime noted
    assert not recorded()

    def settled() -> bool:
        watcher.settle()  # recorded once unchanged for the stability window
        return recorded() == {"late.jpg"}

    wait_for(settled, timeout=10, what="late.jpg recorded")
    assert watcher.scan() == 0


@pytest.mark.django_db(transaction=True)
def test_the_watcher_stops_with_an_error_when_its_observer_dies(stores: Path) -> None:
    running = Running(stores / "media")
    running.thread.start()
    watcher = running.watcher
    wait_for(lambda: watcher.observer and watcher.observer.is_alive(), timeout=5)
    watcher.observer.stop()
    running.thread.join(timeout=10)
    assert not running.thread.is_alive(), "the watcher went on without its observer"
    assert [type(error) for error in running.errors] == [ObserverDied]


def test_watch_refuses_a_missing_media_directory(settings, tmp_path: Path) -> None:
    settings.HASHGUARD_MEDIA_DIR = tmp_path / "nowhere"
    with pytest.raises(CommandError, match="does not exist"):
        call_command("watch")


@pytest.mark.django_db(transaction=True)
def test_a_file_closed_or_renamed_into_place_is_recorded_without_the_stability_window(
    stores: Path, tmp_path: Path
) -> None:
    media = stores / "media"
    running = Running(media)
    running.watcher.stable_seconds = 3600  # only a close or a rename can record it
    with running:
        save(photo("coffee"), media / "closed.jpg", "JPEG")
        save(photo("rocket"), media / ".staged.jpg", "JPEG")
        os.rename(media / ".staged.jpg", media / "renamed.jpg")
        save(photo("astronaut"), tmp_path / "uploaded.jpg", "JPEG")
        os.rename(tmp_path / "uploaded.jpg", media / "moved-in.jpg")  # from outside the tree
        save(photo("chelsea"), media / "leaving.jpg", "JPEG")
        os.rename(media / "leaving.jpg", tmp_path / "left.jpg")  # out of it
        (tmp_path / "album" / "inner").mkdir(parents=True)
        save(photo("coffee"), tmp_path / "album" / "a.jpg", "JPEG")
        save(photo("rocket"), tmp_path / "album" / "inner" / "b.jpg", "JPEG")
        os.rename(tmp_path / "album", media / "album")  # a directory, from outside the tree
        moved = {"closed.jpg", "renamed.jpg", "moved-in.jpg", "album/a.jpg", "album/inner/b.jpg"}
        wait_for(
            # (leaving.jpg may be recorded on its close, before it left)
            lambda: live() - {"leaving.jpg"} == moved,
            timeout=20,
            what="the closed and renamed files recorded",
        )
        # A file still open for writing waits for its writer to close it.
        with open(media / "open.jpg", "wb") as handle:
            handle.write(encode(photo("chelsea"), "JPEG"))
            handle.flush()
            # Quiet for longer than the stability window, still open: not recorded.
            running.watcher.stable_seconds = 0.3

            def quiet_while_open() -> bool:
                state = running.watcher.nominated(b"open.jpg")
                return state is not None and state[0] and state[1] > 0.6

            wait_for(quiet_while_open, timeout=20, what="open.jpg quiet while open")
            assert "open.jpg" not in recorded()
        wait_for(lambda: "open.jpg" in recorded(), timeout=20, what="open.jpg once closed")


def test_a_wide_tree_is_listed_whole_with_few_file_descriptors(tmp_path: Path) -> None:
    for index in range(400):
        (tmp_path / f"d{index}").mkdir()
        (tmp_path / f"d{index}" / "a.jpg").write_bytes(b"x")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
    try:
        listed = list(iter_files(tmp_path))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(listed) == 400

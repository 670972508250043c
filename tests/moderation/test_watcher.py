"""The watcher loop, run in a thread and stopped with its event, on real files."""

import os
import threading
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from moderation.models import Upload
from moderation.watcher import MediaWatcher, ObserverDied, image_suffixes, is_candidate
from tests.images import encode, photo, save
from tests.moderation.processes import wait_for

SUFFIXES = frozenset({".jpg", ".png", ".webp"})


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.jpg", True),
        ("sub/dir/A.PNG", True),
        (".hidden.jpg", False),
        ("sub/.cache/a.jpg", False),
        ("~lock.jpg", False),
        ("a.jpg.part", False),
        ("a.jpg.tmp", False),
        ("notes.txt", False),
        ("noextension", False),
    ],
)
def test_candidate_names(tmp_path: Path, name: str, expected: bool) -> None:
    assert is_candidate(tmp_path / name, tmp_path, SUFFIXES) is expected


def test_candidates_outside_the_root_are_ignored(tmp_path: Path) -> None:
    assert not is_candidate(Path("/etc/passwd.jpg"), tmp_path, SUFFIXES)


class Running:
    def __init__(self, media: Path, **options: float) -> None:
        self.stop = threading.Event()
        self.watcher = MediaWatcher(
            media,
            stop=self.stop,
            suffixes=image_suffixes(),
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
        time.sleep(0.5)  # let the observer start before files arrive
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
    with Running(media):
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
        (media / "link.jpg").symlink_to(outside)
        save(photo("chelsea"), media / os.fsdecode(b"caf\xe9.jpg"), "JPEG")  # not UTF-8
        expected = {
            "existing.jpg",
            "copied.jpg",
            "renamed.png",
            "moved-in.webp",
            "batch/in-dir.jpg",
            "new/deep/nested.jpg",
            "link.jpg",
        }
        wait_for(lambda: recorded() >= expected, timeout=20, what="all files recorded")
        time.sleep(0.5)
    assert recorded() == expected
    states = dict(Upload.objects.values_list("path", "state"))
    assert states.pop("link.jpg") == Upload.State.ERROR  # recorded, never followed
    assert set(states.values()) == {Upload.State.PENDING}
    assert Upload.objects.filter(queued_at__isnull=False).count() == len(states)


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
        assert watcher.scan(media) == 0
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
    watcher = MediaWatcher(
        media, stop=threading.Event(), suffixes=image_suffixes(), stable_seconds=0.2
    )
    assert watcher.scan(media) == 1
    watcher.settle()  # first sight: size and mtime noted
    time.sleep(0.3)
    watcher.settle()  # unchanged since: recorded
    assert recorded() == {"late.jpg"}
    assert watcher.scan(media) == 0


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

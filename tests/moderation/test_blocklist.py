"""Every process's blocklist follows bans added and removed in place; wider changes make
it build again."""

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from django.utils import timezone

from hashes.algorithms import ALGORITHMS, Fingerprint
from moderation import services
from moderation.blocklist import current_blocklist
from moderation.models import ApiToken, Bank, BannedFingerprint, BlocklistChange, BlocklistVersion
from tests.moderation.support import PDQ

pytestmark = pytest.mark.django_db
OTHER = "0f" * 32


def finds(pdq: str) -> list[int]:
    return [match.key for match in current_blocklist().detector.lookup(Fingerprint({"pdq": pdq}))]


def test_a_ban_added_or_removed_is_followed_in_place() -> None:
    services.banned_add_hashes(hashes={"pdq": OTHER})
    before = current_blocklist()
    row = services.banned_add_hashes(hashes={"pdq": PDQ})

    assert current_blocklist() is before  # not built again
    assert finds(PDQ) == [row.pk]

    services.banned_set_active(fingerprint_ids=[row.pk], active=False, actor=None)
    assert finds(PDQ) == [] and current_blocklist() is before
    services.banned_set_active(fingerprint_ids=[row.pk], active=True, actor=None)
    assert finds(PDQ) == [row.pk]
    services.banned_delete(fingerprint_ids=[row.pk], actor=None)
    assert finds(PDQ) == [] and finds(OTHER) != []
    assert current_blocklist() is before


def test_a_banks_change_is_followed_in_place_and_a_large_banks_builds_again(
    monkeypatch,
) -> None:
    """Switched off and on, made a review bank, given a tighter limit: a bank's bans are
    applied again in place, while they are fewer than a process follows. A bank made
    changes nothing; a larger bank's change builds again."""
    from moderation import blocklist

    services.bank_import(lines=[f"pdq {PDQ}\n", f"pdq {OTHER}\n"], bank="partner")
    before = current_blocklist()
    bank = Bank.objects.get(name="partner")
    services.bank_set_enabled(bank_ids=[bank.pk], enabled=False, actor=None)
    assert finds(PDQ) == [] and finds(OTHER) == [] and current_blocklist() is before
    services.bank_set_enabled(bank_ids=[bank.pk], enabled=True, actor=None)
    [key] = finds(PDQ)
    assert key not in before.review

    bank.refresh_from_db()
    bank.action = Bank.Act.REVIEW
    services.bank_save(bank=bank, changed=["action"], actor=None)
    assert key in current_blocklist().review and current_blocklist() is before
    near = f"{int(PDQ, 16) ^ 0b11111:064x}"  # 5 bits off
    assert finds(near) == [key]
    bank.pdq_limit = 2
    services.bank_save(bank=bank, changed=["pdq_limit"], actor=None)
    assert finds(near) == [] and finds(PDQ) == [key] and current_blocklist() is before

    state = blocklist.current_state()
    services.bank_save(bank=Bank(name="empty"), changed=None, actor=None)
    assert blocklist.current_state() == state

    monkeypatch.setattr(services.banks, "FOLLOW_LIMIT", 2)
    services.bank_set_enabled(bank_ids=[bank.pk], enabled=False, actor=None)
    assert current_blocklist() is not before and finds(PDQ) == []


def test_an_import_of_a_few_changes_is_followed_in_place_and_a_wider_one_builds_again(
    monkeypatch,
) -> None:
    """A list's additions, its rows marked deleted and what --replace removes reach every
    process as changes to apply, as a single ban's do, while they are fewer than a process
    follows; more, and each builds its blocklist again."""
    from moderation import blocklist

    services.bank_import(lines=[f"pdq {OTHER}\n"], bank="partner")
    before = current_blocklist()
    third = hashlib.sha256(b"third").hexdigest()
    services.bank_import(lines=[f"pdq {PDQ}\n", f"pdq {third}\n"], bank="partner")
    assert current_blocklist() is before
    assert finds(PDQ) and finds(third) and finds(OTHER)

    services.bank_import(lines=["algorithm,hash,deleted", f"pdq,{third},yes"], bank="partner")
    services.bank_import(lines=[f"pdq {PDQ}\n"], bank="partner", replace=True)
    assert current_blocklist() is before
    assert finds(PDQ) and finds(third) == [] and finds(OTHER) == []

    monkeypatch.setattr(blocklist, "FOLLOW_LIMIT", 3)
    monkeypatch.setattr(services.banks, "FOLLOW_LIMIT", 3)
    wide = [hashlib.sha256(bytes([n])).hexdigest() for n in range(3)]
    services.bank_import(lines=[f"pdq {code}\n" for code in wide], bank="partner")
    after = current_blocklist()
    assert after is not before and all(finds(code) for code in wide) and finds(PDQ)


def test_a_feed_that_went_back_builds_again() -> None:
    """A database restored from a backup: the change the process followed last is gone,
    or the newest change is older than it."""
    services.banned_add_hashes(hashes={"pdq": OTHER})
    before = current_blocklist()
    BlocklistChange.objects.filter(pk=before.seq).update(op="remove", fingerprint_id=0)
    services.banned_add_hashes(hashes={"pdq": PDQ})
    after = current_blocklist()
    assert after is not before and finds(PDQ)

    BlocklistVersion.objects.update(last_change=after.seq - 1)
    again = current_blocklist()
    assert again is not after

    # The same id, key and op, but not the same change: a later one.
    services.banned_add_hashes(hashes={"pdq": OTHER})
    held = current_blocklist()
    BlocklistChange.objects.filter(pk=held.seq).update(created_at=timezone.now())
    services.banned_add_hashes(hashes={"pdq": "3c" * 32})
    assert current_blocklist() is not held


def test_a_burst_of_changes_builds_again(monkeypatch) -> None:
    from moderation import blocklist

    monkeypatch.setattr(blocklist, "FOLLOW_LIMIT", 3)
    before = current_blocklist()
    rows = [services.banned_add_hashes(hashes={"pdq": f"{n:02x}" * 32}) for n in (3, 5, 6)]
    after = current_blocklist()
    assert after is not before and len(after.detector) == len(rows)


def test_a_hash_added_to_a_review_bank_is_followed_with_its_action() -> None:
    services.bank_save(bank=Bank(name="watch", action="review"), changed=None, actor=None)
    before = current_blocklist()
    row, _ = services.bank_add_signal(
        bank="watch", signal_type="pdq", signal=PDQ, token=ApiToken(name="t")
    )
    assert current_blocklist() is before and row.pk in before.review


def _in_child(check: Callable[[], bool]) -> int:
    """Fork, run ``check`` in the child, which may not build a blocklist; its exit code:
    0 when it held, 3 when not, 1 on an error."""
    import os

    from moderation import blocklist

    pid = os.fork()
    if pid == 0:
        code = 1
        try:

            def refuse() -> None:
                raise AssertionError("built a blocklist")

            blocklist.build_blocklist = refuse  # type: ignore[assignment]
            code = 0 if check() else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _maps(path: Path) -> bool:
    """Whether this process maps the file at ``path``."""
    with open("/proc/self/maps") as maps:
        return any(line.rstrip().endswith(str(path)) for line in maps)


def _saved() -> list[Path]:
    from moderation.blocklist import _snapshots

    return sorted(_snapshots().glob("*.blocklist"))


@pytest.mark.django_db(transaction=True)
def test_processes_forked_after_a_preload_map_the_blocklist_it_saved() -> None:
    """A worker's main process saves the machine's blocklist before its pool processes
    fork, and keeps no copy; they map that file without building, and follow the changes
    made since."""
    import gc

    from moderation import blocklist

    row = services.banned_add_hashes(hashes={"pdq": PDQ})
    try:
        blocklist.preload()
        [saved] = _saved()
        assert not _maps(saved)
        assert blocklist.current_version() in saved.name
        added = services.banned_add_hashes(hashes={"pdq": OTHER})

        def maps_and_follows() -> bool:
            return finds(PDQ) == [row.pk] and finds(OTHER) == [added.pk] and _maps(saved)

        assert _in_child(maps_and_follows) == 0
    finally:
        gc.unfreeze()


@pytest.mark.django_db(transaction=True)
def test_after_a_wide_change_one_process_builds_and_the_others_map_its_file(tmp_path) -> None:
    """Processes that see a wide change together wait for the one building, and map the
    file it saves: one build, one copy of the arrays on the machine."""
    import os

    from django.db import connections

    from moderation import blocklist

    services.bank_import(lines=[f"pdq {OTHER}\n"], bank="partner")
    first = current_blocklist()
    [before] = _saved()
    services.bank_import(lines=[f"pdq {PDQ}\n"], bank="other")
    services.blocklist_bump()  # a wide change, as a rehash makes
    built = tmp_path / "built"
    real_build = blocklist.build_blocklist

    def counted() -> blocklist.Blocklist:
        with open(built, "a") as out:
            out.write(f"{os.getpid()}\n")
        return real_build()

    blocklist.build_blocklist = counted  # type: ignore[assignment]
    connections.close_all()  # each child opens its own
    try:
        children = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    held = current_blocklist()
                    code = 0 if finds(PDQ) and finds(OTHER) and _maps(_saved()[0]) else 3
                    code = code if held is not first else 4
                finally:
                    os._exit(code)
            children.append(pid)
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    finally:
        blocklist.build_blocklist = real_build  # type: ignore[assignment]
    assert codes == [0, 0, 0]
    assert len(built.read_text().split()) == 1
    [after] = _saved()
    assert after != before and blocklist.current_version() in after.name


def test_a_build_reads_hash_lists_as_columns_to_the_same_blocklist() -> None:
    """Hash-only rows are read bank by bank as columns; changes followed are read one by
    one, as pictures. Both hold the same pictures, groups, review set and matches."""
    import random

    from hashes.detect import Detector
    from moderation.blocklist import (
        _ROW_FIELDS,
        _enabled_banks,
        _pictures,
        build_blocklist,
        detect_config,
        match_rule,
    )
    from tests.images import encode, photo

    rng = random.Random(3)

    def codes(kind: str, count: int) -> list[str]:
        return [f"{kind} {rng.randbytes(32 if kind == 'pdq' else 8).hex()}\n" for _ in range(count)]

    services.bank_import(lines=codes("pdq", 20) + codes("phash", 20), bank="partner")
    services.bank_import(lines=codes("dhash", 10) + codes("pdq", 10), bank="watch")
    services.bank_import(lines=codes("pdq", 5), bank="known-good")
    Bank.objects.filter(name="partner").update(pdq_limit=20)
    Bank.objects.filter(name="watch").update(action=Bank.Act.REVIEW)
    Bank.objects.filter(name="known-good").update(action=Bank.Act.ALLOW)
    services.banned_add_hashes(hashes={"pdq": PDQ, "phash": "8f3c61d2a4b59e07"}, pdq_quality=90)
    [image] = services.banned_add_image(data=encode(photo("chelsea"), "JPEG"))

    columns = build_blocklist()
    rows = BannedFingerprint.objects.values_list(*_ROW_FIELDS)
    read = list(_pictures(rows, _enabled_banks()))
    one_by_one = Detector(match_rule(), detect_config())
    one_by_one.add_all((key, picture) for key, picture, _ in read)

    keys = list(BannedFingerprint.objects.values_list("pk", flat=True))
    assert len(keys) == 67 and image.pk in keys
    assert len(columns.detector) == len(one_by_one)
    assert set(columns.review) == {key for key, _, action in read if action == Bank.Act.REVIEW}
    assert len(columns.review) == 20
    for key in keys:
        fingerprint = one_by_one.fingerprint(key)
        assert fingerprint is not None and columns.detector.fingerprint(key) == fingerprint
        assert columns.detector.lookup(fingerprint) == one_by_one.lookup(fingerprint)
        assert columns.detector.is_allowed(key) == one_by_one.is_allowed(key)


@pytest.mark.parametrize(
    "committed",
    [
        pytest.param(False, id="in-a-transaction"),
        pytest.param(True, id="in-parallel", marks=pytest.mark.django_db(transaction=True)),
    ],
)
def test_postgresql_reads_hash_rows_whole_as_a_cursor_reads_them_row_by_row(
    monkeypatch, committed: bool
) -> None:
    """PostgreSQL gives a batch of rows as one row of joined columns, the id range in
    parts at once (in one within a transaction); every other database a row at a time.
    Both read each row's hashes and quality as they are, across batches."""
    import random

    from hashes.detect import _hex_rows
    from moderation import hash_rows
    from moderation.models import HASH_ONLY

    rng = random.Random(4)
    lines = [
        f"{kind} {rng.randbytes(32 if kind == 'pdq' else 8).hex()}\n"
        for kind in ("pdq", "phash", "dhash") * 7
    ]
    services.bank_import(lines=lines, bank="partner")
    services.banned_add_hashes(hashes={"pdq": PDQ, "dhash": "8f3c61d2a4b59e07"}, pdq_quality=90)
    services.banned_add_hashes(hashes={"phash": "8f3c61d2a4b59e07", "dhash": "0123456789abcdef"})
    hash_only = BannedFingerprint.objects.filter(HASH_ONLY)
    stored = {
        key: ({name: code for name, code in zip(ALGORITHMS, codes, strict=True) if code}, quality)
        for key, *codes, quality in hash_only.values_list("pk", *ALGORITHMS, "pdq_quality")
    }
    assert len(stored) == 23 and {quality for _, quality in stored.values()} == {None, 90, 100}
    monkeypatch.setattr(hash_rows, "BATCH", 5)
    low, high = min(stored) - 1, max(stored)
    in_parts = [sum(low < key <= top for key in stored) for low, top in hash_rows.parts(low, high)]
    assert len(in_parts) == hash_rows.READERS > 1

    def sizes(rows: int) -> list[int]:
        return [5] * (rows // 5) + [rows % 5] * (rows % 5 > 0)

    def read(reader, parts: list[int]) -> dict[int, tuple[dict[str, str], int | None]]:
        batches = list(reader(hash_only))
        expected = sorted(size for part in parts for size in sizes(part))
        assert sorted(len(batch.keys) for batch in batches) == expected
        rows = {}
        for batch in batches:
            everyone = list(range(len(batch.keys)))
            for key, hashes, quality in zip(
                batch.keys.tolist(),
                _hex_rows(batch.hashes, everyone),
                batch.qualities.tolist(),
                strict=True,
            ):
                rows[key] = (hashes, None if quality < 0 else quality)
        return rows

    joined = read(hash_rows.joined_rows, in_parts if committed else [len(stored)])
    assert joined == read(hash_rows.fetched_rows, [len(stored)]) == stored

    # A hash malformed in the database (written past the checks) stops a read, and says so.
    hash_only.filter(pk=max(stored)).update(phash="zz" * 8)
    with pytest.raises(ValueError, match="malformed hash among the banned fingerprints"):
        list(hash_rows.joined_rows(hash_only))
    with pytest.raises(ValueError, match="'zzzzzzzzzzzzzzzz'"):
        list(hash_rows.fetched_rows(hash_only))


def test_a_process_far_past_its_file_saves_a_newer_one_that_the_others_map(monkeypatch) -> None:
    """Changes applied in place cost each process memory of its own: once one has followed
    FOLLOW_LIMIT of them since its file, it saves the machine a newer file and maps it; a
    process that gets there after it maps that file rather than save another."""
    from hashes import snapshot
    from moderation import blocklist

    monkeypatch.setattr(blocklist, "FOLLOW_LIMIT", 3)
    services.banned_add_hashes(hashes={"pdq": OTHER})
    mine = current_blocklist()
    theirs = blocklist._machine_blocklist()  # another process's, mapped from the same file
    [old] = _saved()
    assert theirs is not mine and theirs.saved_seq == mine.saved_seq == mine.seq
    saves = []
    real_save = snapshot.save
    monkeypatch.setattr(snapshot, "save", lambda *args: saves.append(real_save(*args)))

    def in_turn() -> tuple[blocklist.Blocklist, blocklist.Blocklist]:
        """Each process's check, mine first."""
        nonlocal mine, theirs
        mine = current_blocklist()
        monkeypatch.setattr(blocklist, "_current", theirs)
        theirs = current_blocklist()
        monkeypatch.setattr(blocklist, "_current", mine)
        return mine, theirs

    codes = [hashlib.sha256(bytes([n])).hexdigest() for n in range(3)]
    for code in codes[:2]:
        services.banned_add_hashes(hashes={"pdq": code})
        assert in_turn() == (mine, theirs) and mine.followed == theirs.followed
    assert saves == [] and _saved() == [old]
    services.banned_add_hashes(hashes={"pdq": codes[2]})
    in_turn()
    [new] = _saved()
    assert len(saves) == 1 and new != old and _maps(new)
    assert mine.saved_seq == theirs.saved_seq == mine.seq == theirs.seq
    assert mine.followed == theirs.followed == 0
    assert all(finds(code) for code in [OTHER, *codes])


def test_a_blocklist_that_cannot_be_saved_is_held_by_the_process_itself(
    settings, tmp_path, caplog
) -> None:
    """A data folder that cannot hold the file (here a file stands in its place) costs
    memory, not matching: the process builds and keeps its own copy, and says why."""
    settings.DATA_DIR = tmp_path / "not-a-folder"
    settings.DATA_DIR.write_text("")
    row = services.banned_add_hashes(hashes={"pdq": PDQ})
    held = current_blocklist()
    assert held.saved_seq is None and finds(PDQ) == [row.pk]
    assert "could not save the blocklist" in caplog.text
    added = services.banned_add_hashes(hashes={"pdq": OTHER})
    assert current_blocklist() is held and finds(OTHER) == [added.pk]


def test_a_rebase_that_cannot_save_is_not_tried_again_at_every_check(monkeypatch) -> None:
    """A full disk: the process keeps what it holds as its own copy, and does not write the
    whole blocklist again at each of its next checks."""
    from hashes import snapshot
    from moderation import blocklist

    monkeypatch.setattr(blocklist, "FOLLOW_LIMIT", 3)
    services.banned_add_hashes(hashes={"pdq": OTHER})
    held = current_blocklist()
    [saved] = _saved()
    tries = []

    def full(*args: object) -> None:
        tries.append(args)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snapshot, "save", full)
    codes = [hashlib.sha256(bytes([n])).hexdigest() for n in range(5)]
    for code in codes:
        services.banned_add_hashes(hashes={"pdq": code})
        assert current_blocklist() is held
    assert len(tries) == 1 and held.saved_seq is None and _saved() == [saved]
    assert all(finds(code) for code in codes)


def test_a_rebase_after_a_wide_change_leaves_the_file_to_the_build(monkeypatch) -> None:
    """A process that reaches its limit just as the version changes does not save its
    stale blocklist over the new version's file: the next check builds."""
    from moderation import blocklist

    monkeypatch.setattr(blocklist, "FOLLOW_LIMIT", 1)
    services.banned_add_hashes(hashes={"pdq": OTHER})
    held = current_blocklist()
    [saved] = _saved()
    services.banned_add_hashes(hashes={"pdq": PDQ})
    services.blocklist_bump()
    assert blocklist._rebased(held) is held and _saved() == [saved]
    assert current_blocklist() is not held and finds(PDQ)


def test_a_file_that_cannot_be_read_back_is_built_again(monkeypatch, caplog) -> None:
    """Whatever fails in loading the machine's file (here a class it names is gone), the
    process builds, and its file replaces the one that failed."""
    from hashes import snapshot
    from moderation import blocklist

    row = services.banned_add_hashes(hashes={"pdq": PDQ})
    current_blocklist()
    [saved] = _saved()
    services.blocklist_bump()

    def gone(path: Path) -> object:
        raise AttributeError("Can't get attribute 'Detector' on <module 'hashes.detect'>")

    monkeypatch.setattr(snapshot, "load", gone)
    monkeypatch.setattr(blocklist, "_current", None)
    held = current_blocklist()
    assert held.saved_seq is None and finds(PDQ) == [row.pk]  # its own copy, not mapped
    assert "could not map the saved blocklist" in caplog.text
    [replaced] = _saved()
    assert replaced != saved


def test_a_file_saved_under_other_settings_is_not_mapped(settings, monkeypatch) -> None:
    """The rule and detection settings are part of what a file is: a process whose
    settings differ builds its own rather than use one built for others."""
    from moderation import blocklist

    services.banned_add_hashes(hashes={"pdq": PDQ})
    first = current_blocklist()
    [saved] = _saved()
    settings.HASHGUARD_DETECT = {"colour_candidates": 3}
    monkeypatch.setattr(blocklist, "_current", None)
    held = current_blocklist()
    assert held.detector.config.colour_candidates == 3 != first.detector.config.colour_candidates
    [other] = _saved()
    assert other != saved and finds(PDQ)

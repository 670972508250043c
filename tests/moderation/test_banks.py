"""Banks, and hash lists imported into them and exported from them, on the real database."""

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command

from hashes.hashlists import FORMATS
from moderation import services
from moderation.blocklist import current_blocklist
from moderation.models import AuditEvent, Bank, BannedFingerprint, ImportJob, Upload
from tests.images import encode, photo
from tests.moderation.processes import ROOT
from tests.moderation.support import BANNED_LIST_URL, run_action

pytestmark = pytest.mark.django_db
PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
MD5 = "0cc175b9c0f1b6a831c399e269772661"


def random_pdq(rng: random.Random) -> str:
    return rng.randbytes(32).hex()


def import_lines(lines: list[str], bank: str = "partner", **options: object):
    return services.bank_import(lines=[line + "\n" for line in lines], bank=bank, **options)


def test_existing_bans_are_in_the_local_bank(stores: Path) -> None:
    [row] = services.banned_add_image(data=encode(photo("coffee"), "JPEG"))
    assert row.bank.name == Bank.LOCAL
    pasted = services.banned_add_hashes(hashes={"pdq": PDQ})
    assert pasted.bank == row.bank


def test_an_hma_list_is_imported_once_with_its_problems_reported() -> None:
    lines = [f"pdq {PDQ}", f"md5 {MD5}", "video_md5 " + MD5, "pdq 12", "pdq " + "0" * 64]
    report = import_lines(lines)
    assert (report.format, report.added, report.refused) == ("hma", 2, 1)
    assert [p.line for p in report.problems] == [3, 4]
    assert report.skipped_kinds == {"video_md5": 1}
    bank = Bank.objects.get(name="partner")
    assert bank.source == Bank.Source.FILE
    assert set(bank.fingerprints.values_list("pdq", "md5")) == {(PDQ, ""), ("", MD5)}
    assert BannedFingerprint.objects.filter(bank=bank, source="list").count() == 2

    again = import_lines(lines)
    assert (again.added, again.unchanged) == (0, 2)
    assert bank.fingerprints.count() == 2
    events = AuditEvent.objects.filter(action="bans_imported")
    assert events.count() == 2 and "2 added" in events.order_by("id").first().detail


def test_rows_marked_deleted_remove_their_hashes() -> None:
    import_lines(["algorithm,hash,category", f"pdq,{PDQ},nudity", f"md5,{MD5},scam"])
    report = import_lines(["algorithm,hash,deleted", f"md5,{MD5},yes"])
    assert report.removed == 1
    assert list(Bank.objects.get(name="partner").fingerprints.values_list("pdq", flat=True)) == [
        PDQ
    ]


def test_replace_makes_the_bank_hold_exactly_the_list() -> None:
    rng = random.Random(1)
    old = [random_pdq(rng) for _ in range(3)]
    import_lines([f"pdq {code}" for code in old])
    report = import_lines([f"pdq {old[0]}", f"md5 {MD5}"], replace=True)
    assert (report.added, report.unchanged, report.removed) == (1, 1, 2)
    bank = Bank.objects.get(name="partner")
    assert {(r.pdq, r.md5) for r in bank.fingerprints.all()} == {(old[0], ""), ("", MD5)}


@pytest.mark.parametrize("existing", [False, True], ids=["new bank", "bank with bans"])
def test_a_list_in_many_batches_ends_as_its_last_line_for_each_hash_says(
    monkeypatch, existing: bool
) -> None:
    monkeypatch.setattr(services.banks, "BATCH", 3)  # every few lines a batch of its own
    rng = random.Random(3)
    kept, gone, back, other = (random_pdq(rng) for _ in range(4))
    if existing:
        import_lines([f"pdq {other}", f"pdq {gone}"])
    md5 = hashlib.md5(b"x").hexdigest()
    lines = [
        "algorithm,hash,deleted",
        f"pdq,{kept},",
        f"pdq,{gone},",
        f"pdq,{back},",
        f"md5,{md5},",
        f"pdq,{kept},",  # a repeat, in the next batch
        f"pdq,{gone},yes",
        f"pdq,{back},yes",
        f"md5,{md5},",
        f"pdq,{back},",  # added again after its deletion
        f"pdq,{kept},",
    ]
    report = import_lines(lines, replace=True)
    assert (report.added, report.unchanged) == (4 if existing else 5, 4 if existing else 3)
    bank = Bank.objects.get(name="partner")
    held = {(row.pdq, row.md5) for row in bank.fingerprints.all()}
    assert held == {(kept, ""), (back, ""), ("", md5)}


def test_hashes_differing_only_next_to_zero_bytes_are_told_apart(monkeypatch) -> None:
    monkeypatch.setattr(services.banks, "BATCH", 1)
    digests = ["00" * 15 + "01", "00" * 15 + "02", "01" + "00" * 15, "01" * 16]
    report = import_lines([f"md5 {digest}" for digest in digests + digests])
    assert (report.added, report.unchanged) == (4, 4)


def test_an_import_refuses_the_entries_the_match_rule_calls_too_plain() -> None:
    from hashes.algorithms import ALGORITHMS, Fingerprint
    from hashes.hashlists import Entry
    from hashes.matching import is_low_detail

    rng = random.Random(5)
    digits = {"pdq": 64, "phash": 16, "dhash": 16, "md5": 32, "sha256": 64}
    entries = []
    for _ in range(2000):
        kind = rng.choice(list(digits))
        alphabet = rng.choice(["0123456789abcdef", "0f", "0000f", "0" * 15 + "f"])
        value = "".join(rng.choice(alphabet) for _ in range(digits[kind]))
        quality = rng.choice([None, 10, 49, 50, 90]) if kind == "pdq" else None
        entries.append(Entry(kind, value, quality=quality))
    expected = [
        entry.kind in ALGORITHMS
        and is_low_detail(Fingerprint({entry.kind: entry.value}, pdq_quality=entry.quality), 50)
        for entry in entries
    ]
    assert 100 < sum(expected) < 1900
    report = services.bank_import(
        lines=[
            "algorithm,hash,quality\n",
            *(f"{e.kind},{e.value},{'' if e.quality is None else e.quality}\n" for e in entries),
        ],
        bank="partner",
    )
    assert report.refused == sum(expected)
    assert report.added + report.unchanged + report.refused == len(entries)


def test_provenance_is_kept() -> None:
    import_lines(
        [
            "signal_type,signal_str,collab,category,tags",
            f"pdq,{PDQ},partner-a,terrorism,violent extremist",
        ]
    )
    row = BannedFingerprint.objects.get(pdq=PDQ)
    assert (row.external_id, row.category, row.imported_at is not None) == (
        "partner-a",
        "other",
        True,
    )
    assert row.tags == ["violent", "extremist", "category:terrorism"]


def test_a_hundred_thousand_lines_import_in_batches() -> None:
    rng = random.Random(2)
    lines = [f"pdq {random_pdq(rng)}" for _ in range(100_000)]
    seen = []
    report = import_lines(lines, bank="big", progress=seen.append)
    assert report.added + report.refused == 100_000 and report.refused < 10
    assert sum(seen) == 100_000 and len(seen) == 100_000 // services.banks.BATCH
    assert Bank.objects.get(name="big").fingerprints.count() == report.added


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_export_imported_into_an_empty_bank_gives_the_same_bank(fmt: str) -> None:
    rng = random.Random(3)
    lines = ["algorithm,hash,category,tags,external_id"]
    lines += [f"pdq,{random_pdq(rng)},nudity,a b,{i}" for i in range(20)]
    lines += [f"md5,{hashlib.md5(bytes([i])).hexdigest()},scam,,m{i}" for i in range(5)]
    lines += ["phash,8f373714acfcf4d0,other,,p"]
    import_lines(lines, bank="source")

    exported = list(services.bank_export(bank="source", fmt=fmt))
    services.bank_import(lines=exported, bank="copy", fmt=fmt)

    carried = {"hma": {"pdq", "md5"}, "pdq-hasher": {"pdq"}}.get(fmt, {"pdq", "md5", "phash"})

    def held(bank: str) -> set:
        return {
            (e.kind, e.value, e.category if fmt in ("csv", "te-csv") else "")
            for e in services.bank_entries(bank=bank)
            if e.kind in carried
        }

    assert held("copy") == held("source") and len(held("copy")) > 0


def test_an_md5_from_a_list_catches_exact_copies(stores: Path) -> None:
    data = encode(photo("rocket"), "PNG")
    import_lines([f"md5 {hashlib.md5(data).hexdigest()}"])
    path = stores / "media" / "copy.png"
    path.write_bytes(data)
    upload, _ = services.upload_register(path=path)
    upload = services.upload_process(upload_id=upload.pk)
    assert upload.state == Upload.State.QUARANTINED
    match = upload.matches.get()
    assert (match.stage, match.rule, match.fingerprint.bank.name) == ("sha256", "md5", "partner")


def test_a_disabled_bank_matches_nothing_in_every_worker_at_once(moderator) -> None:
    import_lines([f"pdq {PDQ}"])
    bank = Bank.objects.get(name="partner")
    assert len(current_blocklist().detector) == 1
    assert services.bank_set_enabled(bank_ids=[bank.pk], enabled=False, actor=moderator) == 1
    assert len(current_blocklist().detector) == 0
    assert AuditEvent.objects.filter(action="bank_disabled", actor=moderator).exists()
    services.bank_set_enabled(bank_ids=[bank.pk], enabled=True, actor=moderator)
    assert len(current_blocklist().detector) == 1


def test_the_command_imports_and_exports(tmp_path: Path, capsys) -> None:
    source = tmp_path / "list.txt"
    source.write_text(f"pdq {PDQ}\npdq 12\n")
    call_command("hashlist", "import", str(source), "--bank", "ncmec")
    captured = capsys.readouterr()
    assert "1 added" in captured.out and f"{source}:2:" in captured.err
    target = tmp_path / "out.csv"
    call_command("hashlist", "export", "--bank", "ncmec", "--format", "csv", "-o", str(target))
    assert PDQ in target.read_text()


def test_moderators_see_banks_with_counts_and_can_disable_one(moderator_client) -> None:
    import_lines([f"pdq {PDQ}", f"md5 {MD5}"])
    response = moderator_client.get("/admin/moderation/bank/")
    assert response.status_code == 200
    assert b"partner" in response.content
    bank = Bank.objects.get(name="partner")
    run_action(moderator_client, "/admin/moderation/bank/", "disable", [bank.pk])
    bank.refresh_from_db()
    assert not bank.enabled
    listed = moderator_client.get(BANNED_LIST_URL, {"bank__id__exact": bank.pk})
    assert listed.status_code == 200 and PDQ[:12].encode() in listed.content


def test_the_embedded_default_imports_and_exports(tmp_path: Path) -> None:
    """SQLite, as `bin/run` sets it up: no PostgreSQL involved."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "CELERY_BROKER_URL")
    }
    env.update(HASHGUARD_DATA_DIR=str(tmp_path), DJANGO_SECRET_KEY="embedded")

    def manage(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert manage("migrate", "-v0").returncode == 0
    source = tmp_path / "list.csv"
    source.write_text(f"{PDQ},90,a.jpg\n")
    imported = manage("hashlist", "import", str(source), "--bank", "partner")
    assert imported.returncode == 0, imported.stderr
    assert "pdq-hasher list into bank partner: 1 added" in imported.stdout
    exported = manage("hashlist", "export", "--bank", "partner", "--format", "hma")
    assert exported.stdout == f"pdq {PDQ}\n"
    assert (tmp_path / "hashguard.sqlite3").exists()


def test_a_list_that_cannot_be_read_changes_nothing() -> None:
    with pytest.raises(ValueError, match="Unknown format"):
        import_lines([f"pdq {PDQ}"], fmt="xml")
    with pytest.raises(ValueError, match="Cannot tell"):
        import_lines(["<html>not a list</html>"])
    assert not Bank.objects.filter(name="partner").exists()


def test_a_list_uploaded_in_the_admin_is_imported_by_a_worker(
    moderator_client, stores: Path
) -> None:
    page = moderator_client.get("/admin/moderation/bank/")
    assert b"Import a hash list" in page.content
    upload = SimpleUploadedFile("list.txt", f"pdq {PDQ}\nmd5 {MD5}\npdq 12\n".encode())
    response = moderator_client.post(
        "/admin/moderation/bank/import/",
        {"file": upload, "bank": "partner", "format": "auto"},
    )
    job = ImportJob.objects.get()
    assert response.status_code == 302 and response.url.endswith(f"/importjob/{job.pk}/change/")
    assert (job.state, job.lines_total) == (ImportJob.State.QUEUED, 3)
    assert b'http-equiv="refresh"' in moderator_client.get(response.url).content

    services.import_job_run(job_id=job.pk)  # as the worker the commit queued it for does

    job.refresh_from_db()
    assert (job.state, job.lines_done) == (ImportJob.State.DONE, 3)
    assert "2 added" in job.summary and job.problems[0].startswith("line 3:")
    assert not list((stores / "references" / "imports").iterdir())  # the list is not kept
    shown = moderator_client.get(f"/admin/moderation/importjob/{job.pk}/change/")
    assert b"2 added" in shown.content and b'http-equiv="refresh"' not in shown.content
    assert services.import_job_run(job_id=job.pk).state == ImportJob.State.DONE  # once


def test_an_uploaded_list_is_kept_as_its_chunks_arrive(stores: Path) -> None:
    data = f"pdq {PDQ}\nmd5 {MD5}\npdq {PDQ}".encode()  # no newline at the end
    chunks = [data[start : start + 7] for start in range(0, len(data), 7)]
    job = services.import_job_create(
        chunks=iter(chunks), bank="partner", fmt="auto", replace=False, actor=None
    )
    assert job.lines_total == 3
    assert (services.banks.imports_dir() / job.file_name).read_bytes() == data
    with pytest.raises(ValueError, match="not local"):
        services.import_job_create(
            chunks=iter(chunks), bank=Bank.LOCAL, fmt="auto", replace=False, actor=None
        )
    assert [path.name for path in services.banks.imports_dir().iterdir()] == [job.file_name]


def test_a_bank_is_exported_from_the_admin(moderator_client) -> None:
    import_lines([f"pdq {PDQ}", f"md5 {MD5}"])
    bank = Bank.objects.get(name="partner")
    response = run_action(moderator_client, "/admin/moderation/bank/", "export_hma", [bank.pk])
    assert response["Content-Disposition"] == 'attachment; filename="partner-hma.txt"'
    assert b"".join(response.streaming_content).decode() == f"pdq {PDQ}\nmd5 {MD5}\n"


def test_a_list_read_wrongly_does_not_empty_a_bank_on_replace() -> None:
    import_lines([f"pdq {PDQ}", f"md5 {MD5}"])
    # Cells swapped under their header: no line gives a hash.
    report = import_lines(["algorithm,hash", f"{PDQ},pdq"], fmt="csv", replace=True)
    assert report.removed == 0 and "--replace was not applied" in report.problems[-1].message
    assert Bank.objects.get(name="partner").fingerprints.count() == 2


def test_a_list_of_deletions_only_removes_them_and_replaces_nothing() -> None:
    import_lines([f"pdq {PDQ}", f"md5 {MD5}"])
    report = import_lines(["algorithm,hash,deleted", f"md5,{MD5},yes"], replace=True)
    assert report.removed == 1 and "--replace was not applied" in report.problems[-1].message
    assert list(Bank.objects.get(name="partner").fingerprints.values_list("pdq", flat=True)) == [
        PDQ
    ]


def test_hostile_lists_are_reported_not_crashed_on() -> None:
    report = import_lines(
        [
            "algorithm,hash,reason,quality",
            f"pdq,{PDQ},a reason with a \x00 NUL,99999",
            f"pdq,{PDQ.replace('f', 'a')},fine,²",
            *(f"kind{n},{MD5}," for n in range(50)),
        ],
        fmt="csv",
    )
    assert report.added == 2
    assert len(report.skipped_kinds) <= services.banks.KEPT_KINDS + 1
    row = BannedFingerprint.objects.get(pdq=PDQ)
    assert "\x00" not in row.reason and row.pdq_quality == 100  # a quality out of range is none


def test_the_local_bank_takes_no_lists() -> None:
    with pytest.raises(ValueError, match="local"):
        import_lines([f"pdq {PDQ}"], bank=Bank.LOCAL)


def test_a_byte_order_mark_and_leading_comments_do_not_hide_the_format() -> None:
    lines = ["\ufeff# exported by a partner", *(["# note"] * 6), f"pdq {PDQ}", f"md5 {MD5}"]
    report = import_lines(lines)
    assert (report.format, report.added) == ("hma", 2)


@pytest.mark.django_db(transaction=True)
def test_two_imports_into_one_new_bank_at_once_add_each_hash_once() -> None:
    import threading

    from django.db import connections

    rng = random.Random(4)
    lines = [f"pdq {random_pdq(rng)}" for _ in range(12_000)]
    services.bank_get_or_create(name="partner")
    reports = []

    def run() -> None:
        try:
            reports.append(import_lines(lines))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(report.added for report in reports) == [0, 12_000]
    assert BannedFingerprint.objects.filter(bank__name="partner").count() == 12_000

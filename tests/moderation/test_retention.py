"""Retention: the files of confirmed quarantined uploads go after HASHGUARD_RETENTION_DAYS;
their records, matches and audit stay, and a legal hold keeps a file."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from moderation import services
from moderation.models import AuditEvent, Upload
from tests.moderation.support import UPLOAD_LIST_URL, quarantined_upload, run_action

pytestmark = pytest.mark.django_db


def confirmed(stores, moderator, days_ago: int) -> Upload:
    upload = quarantined_upload(stores)
    services.upload_confirm(upload_id=upload.pk, actor=moderator)
    Upload.objects.filter(pk=upload.pk).update(
        reviewed_at=timezone.now() - timedelta(days=days_ago)
    )
    return Upload.objects.get(pk=upload.pk)


def test_files_past_the_retention_go_and_their_records_stay(
    stores, moderator, moderator_client, settings
) -> None:
    settings.HASHGUARD_RETENTION_DAYS = 7
    upload = confirmed(stores, moderator, days_ago=8)
    path = stores / "quarantine" / upload.quarantine_name
    assert path.exists()

    assert services.uploads_purge_expired() == 1

    assert not path.exists()
    upload.refresh_from_db()
    assert upload.purged_at is not None and upload.state == Upload.State.CONFIRMED
    assert upload.matches.count() == 1 and upload.fingerprints
    event = AuditEvent.objects.get(action="upload_purged", upload=upload)
    assert "7 days" in event.detail
    assert moderator_client.get(f"/files/upload/{upload.pk}/").status_code == 404
    with pytest.raises(services.ActionRefused, match="retention"):
        services.upload_release(upload_id=upload.pk, actor=moderator)
    assert services.uploads_purge_expired() == 0  # once


def test_a_legal_hold_keeps_a_file_and_recent_ones_stay(
    stores, moderator, moderator_client, settings
) -> None:
    settings.HASHGUARD_RETENTION_DAYS = 7
    held = confirmed(stores, moderator, days_ago=30)
    run_action(moderator_client, UPLOAD_LIST_URL, "hold", [held.pk])
    assert Upload.objects.get(pk=held.pk).legal_hold
    assert AuditEvent.objects.filter(action="legal_hold_set", upload=held).exists()
    recent = confirmed(stores, moderator, days_ago=1)

    assert services.uploads_purge_expired() == 0
    assert (stores / "quarantine" / recent.quarantine_name).exists()
    assert (stores / "quarantine" / held.quarantine_name).exists()


def test_by_default_every_file_is_kept(stores, moderator, capsys) -> None:
    upload = confirmed(stores, moderator, days_ago=3650)
    call_command("purge")
    assert "keeps every file" in capsys.readouterr().out
    assert (stores / "quarantine" / upload.quarantine_name).exists()


def test_the_command_deletes_what_is_past_the_retention(stores, moderator, settings, capsys):
    settings.HASHGUARD_RETENTION_DAYS = 30
    confirmed(stores, moderator, days_ago=31)
    call_command("purge")
    assert "1 quarantined file(s) older than 30 days deleted." in capsys.readouterr().out

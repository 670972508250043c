"""Every process's blocklist follows bans added and removed in place; wider changes make
it build again."""

import pytest

from hashes.algorithms import Fingerprint
from moderation import services
from moderation.blocklist import current_blocklist
from moderation.models import Bank, BannedFingerprint, BlocklistChange
from moderation.services.bans import local_bank
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


def test_a_bank_switched_off_builds_again() -> None:
    services.bank_import(lines=[f"pdq {PDQ}\n"], bank="partner")
    before = current_blocklist()
    assert finds(PDQ)
    bank = Bank.objects.get(name="partner")
    services.bank_set_enabled(bank_ids=[bank.pk], enabled=False, actor=None)
    assert current_blocklist() is not before and finds(PDQ) == []


def test_a_change_that_committed_after_a_later_one_is_still_followed() -> None:
    services.banned_add_hashes(hashes={"pdq": OTHER})
    blocklist = current_blocklist()
    # A ban whose change got an id before the newest one the process has seen (its
    # transaction committed later): ids are handed out at insert, not at commit.
    row = BannedFingerprint.objects.create(
        bank=local_bank(), pdq=PDQ, pdq_quality=100, source="hash"
    )
    newest = BlocklistChange.objects.create(fingerprint_id=0, op="remove")
    blocklist.seq = newest.pk + 10
    BlocklistChange.objects.create(id=newest.pk + 1, fingerprint_id=row.pk, op="add")
    assert finds(PDQ) == [row.pk]

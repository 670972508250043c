"""Everything that changes state, by entity: uploads (the pipeline), review (moderators'
decisions), bans (the blocklist), banks, and the API. Callers import from here."""

from moderation.services.api import (
    apitoken_authenticate,
    apitoken_create,
    apitoken_revoke,
    bank_add_signal,
    hash_image,
    lookup_image,
    lookup_signal,
)
from moderation.services.banks import (
    ImportReport,
    bank_entries,
    bank_export,
    bank_get_or_create,
    bank_import,
    bank_save,
    bank_set_enabled,
    import_job_create,
    import_job_run,
)
from moderation.services.bans import (
    banned_add_hashes,
    banned_add_image,
    banned_delete,
    banned_rehash,
    banned_set_active,
    banned_update,
    blocklist_bump,
)
from moderation.services.common import ActionRefused
from moderation.services.review import upload_confirm, upload_flag, upload_release
from moderation.services.uploads import (
    LEASE,
    MAX_ATTEMPTS,
    upload_enqueue,
    upload_fail,
    upload_path_key,
    upload_process,
    upload_register,
    upload_retry,
    uploads_requeue_stale,
)

__all__ = [
    "LEASE",
    "MAX_ATTEMPTS",
    "ActionRefused",
    "ImportReport",
    "apitoken_authenticate",
    "apitoken_create",
    "apitoken_revoke",
    "bank_add_signal",
    "hash_image",
    "lookup_image",
    "lookup_signal",
    "bank_entries",
    "bank_export",
    "bank_get_or_create",
    "bank_import",
    "bank_save",
    "bank_set_enabled",
    "import_job_create",
    "import_job_run",
    "banned_add_hashes",
    "banned_add_image",
    "banned_delete",
    "banned_rehash",
    "banned_set_active",
    "banned_update",
    "blocklist_bump",
    "upload_confirm",
    "upload_enqueue",
    "upload_fail",
    "upload_flag",
    "upload_path_key",
    "upload_process",
    "upload_register",
    "upload_release",
    "upload_retry",
    "uploads_requeue_stale",
]

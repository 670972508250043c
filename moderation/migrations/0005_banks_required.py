import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    """Separate from 0004: PostgreSQL cannot alter a table whose rows were just updated
    through a deferred foreign key in the same transaction."""

    dependencies = [
        ("moderation", "0004_banks"),
    ]

    operations = [
        migrations.AlterField(
            model_name="bannedfingerprint",
            name="bank",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT,
                related_name="fingerprints",
                to="moderation.bank",
            ),
        ),
        migrations.AddConstraint(
            model_name="bannedfingerprint",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("dhash", ""),
                    ("md5", ""),
                    ("pdq", ""),
                    ("phash", ""),
                    ("sha256", ""),
                    _negated=True,
                ),
                name="banned_fingerprint_has_a_hash",
            ),
        ),
    ]

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def existing_bans_to_local(apps: object, schema_editor: object) -> None:
    Bank = apps.get_model("moderation", "Bank")  # type: ignore[attr-defined]
    BannedFingerprint = apps.get_model("moderation", "BannedFingerprint")  # type: ignore[attr-defined]
    local, _ = Bank.objects.get_or_create(
        name="local", defaults={"description": "Banned by this site's moderators."}
    )
    BannedFingerprint.objects.filter(bank__isnull=True).update(bank=local)


class Migration(migrations.Migration):

    dependencies = [
        ('moderation', '0003_fail_closed'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='Bank',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.SlugField(max_length=64, unique=True)),
                ('description', models.TextField(blank=True)),
                ('source', models.CharField(choices=[('manual', 'Added by moderators'), ('file', 'Imported from hash lists'), ('api', 'Fed through the API')], default='manual', max_length=16)),
                ('enabled', models.BooleanField(default=True)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
            ],
            options={
                'ordering': ['name'],
            },
        ),
        migrations.RemoveConstraint(
            model_name='bannedfingerprint',
            name='banned_fingerprint_has_a_hash',
        ),
        migrations.AddField(
            model_name='bannedfingerprint',
            name='external_id',
            field=models.CharField(blank=True, max_length=255),
        ),
        migrations.AddField(
            model_name='bannedfingerprint',
            name='imported_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='bannedfingerprint',
            name='md5',
            field=models.CharField(blank=True, db_index=True, max_length=32, verbose_name='MD5'),
        ),
        migrations.AddField(
            model_name='bannedfingerprint',
            name='tags',
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.AlterField(
            model_name='bannedfingerprint',
            name='source',
            field=models.CharField(choices=[('image', 'Image upload'), ('hash', 'Pasted hash'), ('upload', 'Flagged upload'), ('list', 'Imported hash list')], max_length=16),
        ),
        migrations.AddField(
            model_name='bannedfingerprint',
            name='bank',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name='fingerprints', to='moderation.bank'),
        ),
        migrations.RunPython(existing_bans_to_local, migrations.RunPython.noop),
        migrations.AlterField(
            model_name='auditevent',
            name='action',
            field=models.CharField(choices=[('ban_added', 'Banned fingerprint added'), ('ban_changed', "Banned fingerprint's category or reason changed"), ('ban_deactivated', 'Banned fingerprint deactivated'), ('ban_activated', 'Banned fingerprint reactivated'), ('ban_deleted', 'Banned fingerprint deleted'), ('bans_imported', 'Hash list imported'), ('bank_enabled', 'Bank enabled'), ('bank_disabled', 'Bank disabled'), ('upload_quarantined', 'Upload quarantined'), ('upload_held', 'Upload held (could not be checked)'), ('upload_confirmed', 'Quarantine confirmed'), ('upload_released', 'Upload released'), ('upload_flagged', 'Upload flagged as banned'), ('upload_retried', 'Upload checked again')], max_length=32),
        ),
    ]

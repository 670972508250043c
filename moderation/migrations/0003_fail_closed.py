import hashlib

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def fill_path_keys(apps: object, schema_editor: object) -> None:
    Upload = apps.get_model("moderation", "Upload")  # type: ignore[attr-defined]
    for upload in Upload.objects.only("id", "path").iterator(chunk_size=10_000):
        key = hashlib.sha256(upload.path.encode()).hexdigest()
        Upload.objects.filter(pk=upload.pk).update(path_key=key)


class Migration(migrations.Migration):

    dependencies = [
        ('moderation', '0002_second_stage'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='WorkerHeartbeat',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(max_length=255, unique=True)),
                ('hostname', models.CharField(max_length=255)),
                ('pid', models.PositiveIntegerField()),
                ('started_at', models.DateTimeField()),
                ('beat_at', models.DateTimeField(db_index=True)),
                ('running', models.JSONField(blank=True, default=list)),
                ('waiting', models.JSONField(blank=True, default=list)),
                ('last_progress_at', models.DateTimeField(blank=True, null=True)),
                ('stalled_since', models.DateTimeField(blank=True, null=True)),
                ('stall', models.TextField(blank=True)),
            ],
            options={
                'ordering': ['hostname', 'pid'],
            },
        ),
        migrations.RemoveConstraint(
            model_name='upload',
            name='upload_once_per_content',
        ),
        migrations.AddField(
            model_name='match',
            name='allowed',
            field=models.BooleanField(default=False),
        ),
        migrations.AddField(
            model_name='upload',
            name='lease_expires_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='upload',
            name='path_key',
            field=models.CharField(db_index=True, default='', editable=False, max_length=64),
            preserve_default=False,
        ),
        migrations.RunPython(fill_path_keys, migrations.RunPython.noop),
        migrations.AddField(
            model_name='upload',
            name='raw_path',
            field=models.BinaryField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='upload',
            name='superseded_by',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='moderation.upload'),
        ),
        migrations.AlterField(
            model_name='auditevent',
            name='action',
            field=models.CharField(choices=[('ban_added', 'Banned fingerprint added'), ('ban_changed', "Banned fingerprint's category or reason changed"), ('ban_deactivated', 'Banned fingerprint deactivated'), ('ban_activated', 'Banned fingerprint reactivated'), ('ban_deleted', 'Banned fingerprint deleted'), ('upload_quarantined', 'Upload quarantined'), ('upload_held', 'Upload held (could not be checked)'), ('upload_confirmed', 'Quarantine confirmed'), ('upload_released', 'Upload released'), ('upload_flagged', 'Upload flagged as banned'), ('upload_retried', 'Upload checked again')], max_length=32),
        ),
        migrations.AlterField(
            model_name='match',
            name='stage',
            field=models.CharField(blank=True, choices=[('sha256', 'the same file'), ('hash', 'hashes'), ('local features', 'local features'), ('moderator', 'flagged by a moderator')], max_length=32),
        ),
        migrations.AlterField(
            model_name='upload',
            name='error_code',
            field=models.CharField(blank=True, choices=[('unsupported_format', 'Not an image'), ('uncheckable_format', 'An image format hashguard cannot decode'), ('corrupt', 'Damaged beyond decoding'), ('decompression_bomb', 'Too many pixels'), ('animation_too_long', 'Animation too long to check'), ('file_too_large', 'File too large'), ('too_small', 'Too small to show a picture'), ('unsafe_path', 'Symlink or not a regular file'), ('unreadable', 'No permission to read'), ('missing', 'Removed before it was checked'), ('changed', 'Changed after it was recorded'), ('queue_unavailable', 'Task queue unavailable'), ('timeout', 'Took too long to check'), ('worker_died', 'Stopped a worker repeatedly'), ('internal', 'Internal error')], max_length=32),
        ),
        migrations.AlterField(
            model_name='upload',
            name='inode',
            field=models.BigIntegerField(blank=True, db_index=True, null=True),
        ),
        migrations.AlterField(
            model_name='upload',
            name='path',
            field=models.TextField(),
        ),
        migrations.AlterField(
            model_name='upload',
            name='queued_at',
            field=models.DateTimeField(blank=True, db_index=True, null=True),
        ),
        migrations.AlterField(
            model_name='upload',
            name='state',
            field=models.CharField(choices=[('pending', 'Pending'), ('processing', 'Processing'), ('clean', 'Clean'), ('quarantined', 'Quarantined (to review)'), ('confirmed', 'Quarantined (confirmed)'), ('released', 'Released'), ('held', 'Held (could not be checked)'), ('error', 'Error'), ('not_image', 'Not an image'), ('superseded', 'Superseded')], db_index=True, default='pending', max_length=16),
        ),
        migrations.AddConstraint(
            model_name='upload',
            constraint=models.UniqueConstraint(condition=models.Q(('state__in', ['pending', 'processing'])), fields=('path_key', 'sha256'), name='one_undecided_upload_per_content'),
        ),
    ]

from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('moderation', '0006_import_jobs'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name='bannedfingerprint',
            name='dhash',
            field=models.CharField(blank=True, max_length=16, verbose_name='dHash'),
        ),
        migrations.AlterField(
            model_name='bannedfingerprint',
            name='md5',
            field=models.CharField(blank=True, max_length=32, verbose_name='MD5'),
        ),
        migrations.AlterField(
            model_name='bannedfingerprint',
            name='pdq',
            field=models.CharField(blank=True, max_length=64, verbose_name='PDQ'),
        ),
        migrations.AlterField(
            model_name='bannedfingerprint',
            name='phash',
            field=models.CharField(blank=True, max_length=16, verbose_name='pHash'),
        ),
        migrations.AlterField(
            model_name='bannedfingerprint',
            name='sha256',
            field=models.CharField(blank=True, max_length=64, verbose_name='SHA-256'),
        ),
        migrations.AddIndex(
            model_name='bannedfingerprint',
            index=models.Index(condition=models.Q(('pdq', ''), _negated=True), fields=['pdq'], name='banned_pdq'),
        ),
        migrations.AddIndex(
            model_name='bannedfingerprint',
            index=models.Index(condition=models.Q(('phash', ''), _negated=True), fields=['phash'], name='banned_phash'),
        ),
        migrations.AddIndex(
            model_name='bannedfingerprint',
            index=models.Index(condition=models.Q(('dhash', ''), _negated=True), fields=['dhash'], name='banned_dhash'),
        ),
        migrations.AddIndex(
            model_name='bannedfingerprint',
            index=models.Index(condition=models.Q(('sha256', ''), _negated=True), fields=['sha256'], name='banned_sha256'),
        ),
        migrations.AddIndex(
            model_name='bannedfingerprint',
            index=models.Index(condition=models.Q(('md5', ''), _negated=True), fields=['md5'], name='banned_md5'),
        ),
    ]

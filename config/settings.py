"""Settings, read from the environment with defaults for the embedded mode.

With nothing set, hashguard keeps everything under ./var: a SQLite database, the watched
media directory, the quarantine and reference stores, and a Celery broker that is a
directory of message files, so one machine needs no database or Redis server.
Production sets DATABASE_URL (PostgreSQL) and CELERY_BROKER_URL (Redis).
"""

from datetime import timedelta
from pathlib import Path

import dj_database_url

from config.env import (
    env_bool,
    env_float,
    env_int,
    env_json,
    env_list,
    env_path,
    env_str,
    persistent_secret,
)

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = env_path("HASHGUARD_DATA_DIR", BASE_DIR / "var")

SECRET_KEY = env_str("DJANGO_SECRET_KEY", "") or persistent_secret(DATA_DIR / "secret_key")
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
# Production runs behind a TLS-terminating proxy: cookies only over HTTPS, plain HTTP
# redirected, HSTS. The proxy must set X-Forwarded-Proto and X-Forwarded-For, replacing
# whatever the client sent.
HASHGUARD_HTTPS = env_bool("HASHGUARD_HTTPS", False)
if HASHGUARD_HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("HASHGUARD_HSTS_SECONDS", 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("HASHGUARD_HSTS_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("HASHGUARD_HSTS_PRELOAD", True)
    # The client's address for login throttling: the last proxy's X-Forwarded-For entry.
    AXES_IPWARE_PROXY_COUNT = 1
    AXES_IPWARE_META_PRECEDENCE_ORDER = ["HTTP_X_FORWARDED_FOR", "REMOTE_ADDR"]

INSTALLED_APPS = [
    # First, so that its admin/base_site.html (images blurred until revealed) is the one.
    "moderation",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into a 429 page.
    "axes.middleware.AxesMiddleware",
]

# Login throttling: after HASHGUARD_LOGIN_FAILURES failed logins for one user name from
# one address, that pair is locked out for HASHGUARD_LOGIN_LOCKOUT_MINUTES.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("HASHGUARD_LOGIN_FAILURES", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("HASHGUARD_LOGIN_LOCKOUT_MINUTES", 15.0))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "moderation.context.image_protection",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'hashguard.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0),
        # A kept connection is checked before a request or task uses it, so that one the
        # database dropped (a restart) is replaced rather than failing the work.
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The watcher, the workers and the admin write from separate processes: WAL lets
    # readers go on during a write, and IMMEDIATE transactions wait for the lock instead
    # of failing half-way with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not memory, so that worker processes started by the tests share it.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Files sent to the admin's ban form are spooled to disk past this size; the size limit
# itself is HASHGUARD_MAX_BYTES.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
FILE_UPLOAD_PERMISSIONS = 0o600

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("HASHGUARD_LOG_LEVEL", "INFO")},
    # django-axes says at every start how it blocks; lockouts are warnings.
    "loggers": {"axes": {"level": "WARNING"}},
}

# --- hashguard ---------------------------------------------------------------------
# The watched directory: users' uploads land here.
HASHGUARD_MEDIA_DIR = env_path("HASHGUARD_MEDIA_DIR", DATA_DIR / "media")
# Quarantined files and banned reference images: served only to staff, through a view.
HASHGUARD_QUARANTINE_DIR = env_path("HASHGUARD_QUARANTINE_DIR", DATA_DIR / "quarantine")
HASHGUARD_REFERENCE_DIR = env_path("HASHGUARD_REFERENCE_DIR", DATA_DIR / "references")
# How the fingerprints of an upload and a banned image must agree; see hashes/matching.py.
HASHGUARD_MATCH_RULE = env_json("HASHGUARD_MATCH_RULE", None)
# The views, turns and local-feature stage of matching; see hashes/detect.py.
HASHGUARD_DETECT = env_json("HASHGUARD_DETECT", None)
# A worker builds the blocklist once, before its pool processes fork, and they share that
# copy's memory; off, each process builds its own when it takes its first file.
HASHGUARD_PRELOAD_BLOCKLIST = env_bool("HASHGUARD_PRELOAD_BLOCKLIST", True)
# A file counts as written once its size and mtime have not changed for this long.
HASHGUARD_STABLE_SECONDS = env_float("HASHGUARD_STABLE_SECONDS", 1.0)
# The watcher walks the whole media tree this often, for events the kernel dropped.
HASHGUARD_RESCAN_SECONDS = env_float("HASHGUARD_RESCAN_SECONDS", 300.0)
# A worker gives up on one file after this many seconds, recording a timeout.
HASHGUARD_TASK_TIME_LIMIT = env_int("HASHGUARD_TASK_TIME_LIMIT", 300)
# An upload whose message may have been lost (sent this long ago and no longer in the
# queue) is sent again; one whose worker's lease ran out is sent again at once.
HASHGUARD_REQUEUE_SECONDS = env_float("HASHGUARD_REQUEUE_SECONDS", 60.0)
# A worker holding a message that a free pool process has not started for this long
# has stalled: it records why and exits, for its supervisor to start it again.
HASHGUARD_STALL_SECONDS = env_float("HASHGUARD_STALL_SECONDS", 30.0)
# What happens to a file that may show a picture but cannot be checked (damaged beyond
# decoding, an undecodable format, too large, a worker gave up): "hold" moves it to
# quarantine for a moderator, "leave" records the error and leaves it in place.
HASHGUARD_UNCHECKABLE = env_str("HASHGUARD_UNCHECKABLE", "hold")
# Limits on what the workers will decode.
HASHGUARD_MAX_BYTES = env_int("HASHGUARD_MAX_BYTES", 100 * 1024 * 1024)
HASHGUARD_MAX_PIXELS = env_int("HASHGUARD_MAX_PIXELS", 50_000_000)
# Distinct frames of an animation checked: the first, then those shown longest.
HASHGUARD_MAX_FRAMES = env_int("HASHGUARD_MAX_FRAMES", 32)
# A moderator who opens the review queue is handed this many uploads, held for them this
# long (renewed while they work); colleagues are handed others.
HASHGUARD_REVIEW_BATCH = env_int("HASHGUARD_REVIEW_BATCH", 20)
HASHGUARD_REVIEW_LEASE_SECONDS = env_int("HASHGUARD_REVIEW_LEASE_SECONDS", 300)
# How images of uploads and bans are shown in the admin until a moderator reveals one:
# blurred by this many pixels (0: not), in greys or not, revealed by a click or by
# hovering. Each moderator may choose otherwise under "Image preferences".
HASHGUARD_IMAGE_BLUR = env_int("HASHGUARD_IMAGE_BLUR", 24)
HASHGUARD_IMAGE_GREYSCALE = env_bool("HASHGUARD_IMAGE_GREYSCALE", False)
HASHGUARD_IMAGE_REVEAL = env_str("HASHGUARD_IMAGE_REVEAL", "click")
# A new ban is checked against the uploads recorded clean in this many days before it,
# by the workers in the background; 0 turns looking back off.
HASHGUARD_RETRO_DAYS = env_int("HASHGUARD_RETRO_DAYS", 30)
# The files of confirmed quarantined uploads are deleted this many days after their
# confirmation, keeping the record, fingerprints, matches and audit; 0 keeps them all.
# An upload on legal hold is kept.
HASHGUARD_RETENTION_DAYS = env_int("HASHGUARD_RETENTION_DAYS", 0)
# The policy labels a moderator may put on a decision (comma-separated).
HASHGUARD_POLICY_LABELS = env_list(
    "HASHGUARD_POLICY_LABELS",
    ["nudity", "violence", "hate", "scam", "impersonation", "copyright", "not-violating"],
)
# Addresses or networks (comma-separated) that may read /metrics without a token: the
# Prometheus server's, where it connects directly rather than through the proxy.
HASHGUARD_METRICS_ALLOW = env_list("HASHGUARD_METRICS_ALLOW", [])

# --- Celery ------------------------------------------------------------------------
BROKER_DIR = DATA_DIR / "broker"
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    # Messages are files in one directory: durable across restarts, no server needed.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        "polling_interval": 0.2,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # A task not acknowledged this long after delivery is handed to another worker.
        # It must exceed the longest task; fingerprinting takes well under a minute.
        "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600),
        "socket_connect_timeout": 5,
        "socket_timeout": 10,
    }
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SOFT_TIME_LIMIT = HASHGUARD_TASK_TIME_LIMIT
CELERY_TASK_TIME_LIMIT = HASHGUARD_TASK_TIME_LIMIT + 30
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery closes a worker's database connections around every task unless told to reuse
# them: that would open one per upload whatever DATABASE_CONN_MAX_AGE says. Django's own
# rule decides instead, around each task as around a request (config/celery.py); Celery
# still renews a connection every this many tasks.
CELERY_DB_REUSE_MAX = 1000
# Fail fast when the broker is down: the upload stays pending, the error is recorded and
# the watcher queues it again later.
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 1,
}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)

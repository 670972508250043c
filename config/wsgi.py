import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

from moderation import metrics  # noqa: E402  (after Django is set up)

metrics.start_flushing()

import os

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client

from tests.moderation.support import MODERATOR_PERMISSIONS, make_user


@pytest.fixture
def moderator() -> User:
    return make_user("moderator", *MODERATOR_PERMISSIONS)


@pytest.fixture
def moderator_client(moderator: User) -> Client:
    client = Client()
    client.force_login(moderator)
    return client


REDIS_URL = os.environ.get("HASHGUARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def redis_broker() -> str:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"no Redis at {REDIS_URL}: the test command starts one (see bin/test)")
    client.flushdb()
    yield REDIS_URL
    client.flushdb()

import pytest
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

import uuid

import pytest
from django.contrib.auth import get_user_model


@pytest.mark.django_db
def test_users_have_uuid_keys():
    user = get_user_model().objects.create_user(username="ada", password="a-long-enough-password")
    assert isinstance(user.pk, uuid.UUID)

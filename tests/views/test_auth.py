"""Admin gate: where the password comes from and how it is compared."""

from __future__ import annotations

import hmac

import pytest

from fracture.config import Settings
from fracture.views import auth


@pytest.mark.parametrize(
    ("candidate", "expected", "ok"),
    [
        ("s3cret", "s3cret", True),
        ("s3cret ", "s3cret", False),
        ("S3CRET", "s3cret", False),
        ("", "s3cret", False),
        (None, "s3cret", False),
        ("pässwörd", "pässwörd", True),
        (None, None, True),
        ("anything", None, True),
        ("anything", "", True),
    ],
)
def test_check_password(candidate, expected, ok):
    assert auth.check_password(candidate, expected) is ok


def test_check_password_compares_in_constant_time(monkeypatch):
    calls = []
    original = hmac.compare_digest

    def spy(a, b):
        calls.append((type(a), type(b)))
        return original(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert auth.check_password("right", "right")
    assert not auth.check_password("wrong", "right")
    assert calls == [(bytes, bytes), (bytes, bytes)]


class MissingSecretsFile(dict):
    """Behaves like st.secrets when no secrets.toml exists."""

    def get(self, key, default=None):
        raise FileNotFoundError("No secrets found")


def test_password_sources_secrets_first_then_settings():
    with_env = Settings(admin_password="from-env")
    assert auth.admin_password(with_env, {"admin_password": "from-secrets"}) == "from-secrets"
    assert auth.admin_password(with_env, {"admin_password": ""}) == "from-env"
    assert auth.admin_password(with_env, {}) == "from-env"
    assert auth.admin_password(with_env, MissingSecretsFile()) == "from-env"
    assert auth.admin_password(with_env) == "from-env"
    assert auth.admin_password(with_env) is not None


def test_no_password_means_open():
    open_settings = Settings(admin_password=None)
    assert auth.admin_password(open_settings, {}) is None
    assert auth.admin_password(Settings(admin_password=""), {"admin_password": ""}) is None
    assert auth.admin_password(open_settings, MissingSecretsFile()) is None
    assert auth.check_password(None, auth.admin_password(open_settings))


def test_env_variable_reaches_the_gate():
    settings = Settings.load(
        environ={"FRACTURE_ADMIN_PASSWORD": "pw", "FRACTURE_CONFIG": ""}, config_file=None
    )
    assert auth.admin_password(settings) is not None
    assert auth.check_password("pw", auth.admin_password(settings))

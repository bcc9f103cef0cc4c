"""The admin gate in front of training, promotion and rollback in the dashboard.

One shared password, from Streamlit secrets (``.streamlit/secrets.toml`` or the
hosting platform's secret store, passed in as ``st.secrets``) or from
``FRACTURE_ADMIN_PASSWORD``. With neither set the gate is open, which suits a
laptop; a public deployment must set one. This module never logs, prints or
returns a password in a message, and compares in constant time so response
timing does not reveal how much of a guess was right.
"""

from __future__ import annotations

import hmac
from typing import Any, Mapping

from fracture.config import Settings, get_settings

__all__ = ["admin_password", "check_password", "SECRET_KEY"]

SECRET_KEY = "admin_password"


def _secret(secrets: Mapping[str, Any] | None) -> Any:
    if secrets is None:
        return None
    try:
        return secrets.get(SECRET_KEY)
    except (KeyError, FileNotFoundError):
        # st.secrets raises FileNotFoundError (StreamlitSecretNotFoundError)
        # when no secrets file exists at all: that just means "not configured".
        return None


def admin_password(
    settings: Settings | None = None, secrets: Mapping[str, Any] | None = None
) -> str | None:
    """The configured admin password, secrets first, then settings; None when unset or empty."""
    value = _secret(secrets)
    if value in (None, ""):
        value = (settings or get_settings()).admin_password
    if value in (None, ""):
        return None
    return str(value)


def check_password(candidate: str | None, expected: str | None) -> bool:
    """Whether ``candidate`` matches ``expected``, compared in constant time.

    ``expected`` None or empty means no password is configured: open. An
    empty or missing ``candidate`` never matches a configured password.
    """
    if expected is None or expected == "":
        return True
    if not candidate:
        return False
    return hmac.compare_digest(candidate.encode("utf-8"), expected.encode("utf-8"))

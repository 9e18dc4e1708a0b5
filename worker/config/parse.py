"""Reading settings from an environment mapping: one parser per kind, each naming its variable.

Every parser takes the mapping to read (``os.environ`` only at the call in
``celeryconfig``) and raises :class:`~worker.config.ConfigError` with a message
that names the variable and never echoes a credential.
"""

from __future__ import annotations

import base64
import ipaddress
import math
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from worker.config import ConfigError
from worker.core.contract import PROVIDERS
from worker.core.urls import redact_url


def env_str(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    """A string setting; empty counts as unset."""
    value = env.get(name, "").strip()
    return value or default


def env_token(env: Mapping[str, str], name: str) -> str | None:
    """A credential sent in an HTTP header: printable ASCII, no space or line break.

    Refused at start, by name and never echoed: otherwise every request fails in the
    HTTP library, and every job only after its whole retry budget.
    """
    value = env_str(env, name)
    if value is not None and not re.fullmatch(r"[!-~]+", value):
        raise ConfigError(
            f"{name} must be printable ASCII with no space or line break: it is sent in "
            "an HTTP header"
        )
    return value


def env_number(
    env: Mapping[str, str], name: str, default: float, *, minimum: float, maximum: float
) -> float:
    """A number setting within [minimum, maximum]."""
    raw = env_str(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum:g} and {maximum:g}, got {raw!r}")
    return value


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int) -> int:
    """A whole-number setting within [minimum, maximum]."""
    raw = env_str(env, name)
    if raw is None:
        return default
    if not raw.lstrip("-").isdigit():
        raise ConfigError(f"{name} must be a whole number, got {raw!r}")
    value = int(raw)
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {raw!r}")
    return value


def env_url(env: Mapping[str, str], name: str, default: str, *, schemes: tuple[str, ...]) -> str:
    """A URL setting with one of ``schemes``."""
    value = env_str(env, name, default) or default
    try:
        parts = urlsplit(value)
    except ValueError:  # an unbalanced [ in the host
        parts = urlsplit("")
    if parts.scheme not in schemes or not (parts.netloc or parts.path):
        raise ConfigError(f"{name} must be a {' or '.join(schemes)} URL, got {redact_url(value)!r}")
    return value


def env_flag(env: Mapping[str, str], name: str) -> bool:
    """A 0/1 switch; anything else is an error rather than a guess."""
    raw = env_str(env, name, "0")
    if raw not in {"0", "1"}:
        raise ConfigError(f"{name} must be 0 or 1, got {raw!r}")
    return raw == "1"


def env_choice(env: Mapping[str, str], name: str, default: str, *, choices: tuple[str, ...]) -> str:
    """One of ``choices``; anything else is an error rather than a guess."""
    value = env_str(env, name, default) or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def env_address(env: Mapping[str, str], name: str, default: str) -> str:
    """An IP address to listen on; a host name would resolve to whichever address came first."""
    value = env_str(env, name, default) or default
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{name} must be an IP address to listen on, got {value!r}") from None
    return value


def env_secret(env: Mapping[str, str], name: str) -> tuple[str, str | None]:
    """``name`` itself, or the contents of the file ``name``_FILE names: a Docker secret.

    Returns where the value came from (for messages, which never echo the value)
    and the value, or None when neither is set. Setting both is an error rather
    than a silent choice. A file is read as UTF-8 with its line endings removed
    from the end only: a secret file is usually written with one.
    """
    inline, path = env_str(env, name), env_str(env, f"{name}_FILE")
    if inline and path:
        raise ConfigError(f"set {name} or {name}_FILE, not both")
    if not path:
        return name, inline
    source = f"{name}_FILE ({path})"
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise ConfigError(f"{source} cannot be read: {error.strerror}") from None
    except UnicodeError:
        raise ConfigError(f"{source} is not a UTF-8 text file") from None
    return source, text.rstrip("\r\n")


#: Settings that hold a credential and may come from a file instead (``X_FILE``):
#: Docker and Kubernetes hand secrets over as files, never in the environment that
#: ``docker inspect`` and /proc/<pid>/environ show.
SECRET_FILE_VARIABLES = (
    "IAMPORT_SECRET_FILE",
    "PORTONE_API_SECRET_FILE",
    "REDIS_URL_FILE",
    "BROKER_URL_FILE",
)


def with_secret_files(env: Mapping[str, str]) -> Mapping[str, str]:
    """``env`` with each ``X_FILE`` of SECRET_FILE_VARIABLES read into ``X``.

    The parsers then read one variable whichever way it was given.
    """
    resolved = dict(env)
    for file_variable in SECRET_FILE_VARIABLES:
        name = file_variable.removesuffix("_FILE")
        source, value = env_secret(env, name)
        if source != name:
            if not value:
                raise ConfigError(f"{source} is empty")
            resolved[name] = value
    return resolved


def fernet_keys(env: Mapping[str, str]) -> list[str]:
    """PII_ENCRYPTION_KEYS, or the file PII_ENCRYPTION_KEYS_FILE names: Fernet keys, newest first.

    Each key is checked for shape here (32 bytes, url-safe base64), so a typo
    stops the process at start; a key's value is never echoed.
    """
    source, text = env_secret(env, "PII_ENCRYPTION_KEYS")
    keys = [key for key in re.split(r"[,\s]+", text or "") if key]
    for position, key in enumerate(keys, start=1):
        try:
            raw = base64.urlsafe_b64decode(key.encode("ascii"))
        except (ValueError, UnicodeError):
            raw = b""
        if len(raw) != 32:
            raise ConfigError(
                f"{source}: key {position} is not a Fernet key (32 url-safe base64 bytes)"
            )
    if source != "PII_ENCRYPTION_KEYS" and not keys:
        raise ConfigError(f"{source} holds no key")
    return keys


# Celery reads these itself and lets them override celeryconfig.
SHADOWING_CELERY_VARIABLES = (
    "CELERY_BROKER_URL",
    "CELERY_BROKER_READ_URL",
    "CELERY_BROKER_WRITE_URL",
    "CELERY_RESULT_BACKEND",
)


def refuse_celery_variables(env: Mapping[str, str]) -> None:
    """Stop at start when a Celery variable would silently override REDIS_URL or BROKER_URL.

    The one exception is the ``celery`` command's own echo: it reads
    BROKER_URL (as the envvar of ``--broker``) and copies it, unchanged, into
    CELERY_BROKER_URL. That copy says nothing BROKER_URL does not.
    """
    present = [
        name
        for name in SHADOWING_CELERY_VARIABLES
        if env.get(name)
        and not (name == "CELERY_BROKER_URL" and env.get(name) == env.get("BROKER_URL"))
    ]
    if present:
        raise ConfigError(
            f"{', '.join(present)} is set (also by `celery --broker`); this worker reads "
            "REDIS_URL and BROKER_URL only. Unset it and set REDIS_URL or BROKER_URL instead."
        )


def refuse_same_stream(ingress_stream: str, result_stream: str) -> None:
    """Stop when the ingress would read the result events as payment events."""
    if ingress_stream == result_stream:
        raise ConfigError(
            f"INGRESS_STREAM and RESULT_STREAM are both {ingress_stream!r}: the ingress would "
            "read the result events as payment events"
        )


def env_providers(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated list of the providers the contract names (``iamport``,
    ``portone``), each once; unset or empty: ``default``."""
    text = env_str(env, name)
    if not text:
        return default
    named = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in named if part not in PROVIDERS]
    if unknown:
        raise ConfigError(
            f"{name} names {', '.join(map(repr, unknown))}: the providers are "
            f"{', '.join(PROVIDERS)}"
        )
    if not named:
        raise ConfigError(f"{name} names no provider")
    return tuple(dict.fromkeys(named))

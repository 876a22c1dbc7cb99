"""What the AWS environment settles without botocore: static credentials from the environment
(the first provider of the AWS chain) and whether the shared config file has ``s3`` settings.

Used only where the answer is the chain's own, so that a command on ``s3://`` need not import
botocore (~0.1 s) when the credentials are in the environment, as in CI jobs and containers;
everything else (profiles, SSO, roles, credential processes) goes through botocore.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from syncengine.store.s3_urls import (
    Addressing,
    _addressing_setting,
    _check_endpoint,
    _env_endpoint,
    default_endpoint,
)


class StaticCredentials(NamedTuple):
    """Credentials that never change (explicit, or from the environment); shaped like
    botocore's frozen credentials, so that both are signed with alike."""

    access_key: str
    secret_key: str
    token: str | None = None
    method: str = "env"

    def get_frozen_credentials(self) -> StaticCredentials:
        return self

    def __repr__(self) -> str:  # never the secret or the token
        return f"StaticCredentials(access_key={self.access_key!r}, method={self.method!r})"


def env_credentials(environ: Mapping[str, str] | None = None) -> StaticCredentials | None:
    """``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` [/``AWS_SESSION_TOKEN``] when botocore's
    chain would use exactly them: both set, no profile selected (``AWS_PROFILE``,
    ``AWS_DEFAULT_PROFILE``) and no expiry (``AWS_CREDENTIAL_EXPIRATION`` makes botocore
    re-read them); else None."""
    env = os.environ if environ is None else environ
    akid, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not akid or not secret:
        return None
    if env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or env.get("AWS_CREDENTIAL_EXPIRATION"):
        return None
    token = env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None
    return StaticCredentials(akid, secret, token, "env")


def config_has_s3_settings(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the default profile of the AWS config file has an ``s3`` section (addressing
    style and the like), which only botocore reads."""
    env = os.environ if environ is None else environ
    path = Path(env.get("AWS_CONFIG_FILE") or "~/.aws/config").expanduser()
    if not path.exists():
        return False
    parser = configparser.RawConfigParser()
    parser.read(path)
    return parser.has_section("default") and parser.has_option("default", "s3")


class Settings(NamedTuple):
    """What an S3 store's arguments and the environment settle before any file or network
    is read: the region (None: the profile's config decides), the endpoint (None: AWS's
    regional one) and the addressing style (``auto``: the config may set one)."""

    region: str | None
    endpoint: str | None
    addressing: Addressing


def settings(
    region: str | None = None,
    endpoint_url: str | None = None,
    addressing: Addressing = "auto",
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """The arguments, else ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3``/
    ``AWS_ENDPOINT_URL`` (checked) and ``SYNCENGINE_S3_ADDRESSING``."""
    env = os.environ if environ is None else environ
    region = region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None
    configured = endpoint_url if endpoint_url is not None else _env_endpoint(env)
    style = env.get("SYNCENGINE_S3_ADDRESSING")
    if addressing == "auto" and style:
        addressing = _addressing_setting(style, "SYNCENGINE_S3_ADDRESSING")
    return Settings(region, _check_endpoint(configured) if configured else None, addressing)


class Static(NamedTuple):
    region: str
    endpoint: str
    credentials: StaticCredentials


def static_resolution(
    known: Settings,
    profile: str | None = None,
    explicit: StaticCredentials | None = None,
    environ: Mapping[str, str] | None = None,
) -> Static | None:
    """Region, endpoint and credentials without botocore, where they are the AWS chain's own
    answer: no profile, the region known, credentials given (``explicit``) or in the
    environment (`env_credentials`), and no ``s3`` settings in the config file that only
    botocore would read (unless the addressing style is set already); else None."""
    if profile is not None or known.region is None:
        return None
    creds = explicit if explicit is not None else env_credentials(environ)
    if creds is None:
        return None
    if known.addressing == "auto" and config_has_s3_settings(environ):
        return None
    return Static(known.region, known.endpoint or default_endpoint(known.region), creds)

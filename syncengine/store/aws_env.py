"""What the AWS environment settles, in one place for every HTTP path of an S3 store (aiohttp,
the direct download connections, the no-change quick path): static credentials from the
environment (the first provider of the AWS chain), the shared config file's profile (its
``endpoint_url``, ``services`` section, ``ca_bundle``, ``region``), ``AWS_CA_BUNDLE`` and the
proxy that ``HTTP(S)_PROXY``/``NO_PROXY`` name for an endpoint.

Each rule is botocore's (tests/unit/test_aws_env.py compares them with botocore's answers),
so that a command on ``s3://`` need not import botocore (~0.1 s) when the credentials are in
the environment, as in CI jobs and containers; everything else (credential files, SSO,
roles, credential processes) goes through botocore, whose parsed config the same functions
read.
"""

from __future__ import annotations

import base64
import configparser
import os
import shlex
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

from syncengine.errors import ConfigError
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
    chain would use exactly them: both set and no expiry (``AWS_CREDENTIAL_EXPIRATION`` makes
    botocore re-read them); else None. A profile named in ``AWS_PROFILE`` does not change that:
    botocore skips the environment's keys only for a profile passed to its session."""
    env = os.environ if environ is None else environ
    akid, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not akid or not secret or env.get("AWS_CREDENTIAL_EXPIRATION"):
        return None
    token = env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None
    return StaticCredentials(akid, secret, token, "env")


# ---- the shared config file ----------------------------------------------------------------


def profile_name(profile: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The profile botocore's session selects: ``profile``, else ``AWS_DEFAULT_PROFILE``, else
    ``AWS_PROFILE`` (botocore's order), else ``default``."""
    env = os.environ if environ is None else environ
    return profile or env.get("AWS_DEFAULT_PROFILE") or env.get("AWS_PROFILE") or "default"


def load_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The shared config file (``AWS_CONFIG_FILE``, else ``~/.aws/config``) in the shape of
    botocore's ``Session.full_config``: ``{"profiles": {...}, "services": {...}}``, a nested
    setting (``s3 =`` followed by indented ``key = value`` lines) as a dict. A missing file
    is empty; an unreadable one raises ``ConfigError``."""
    env = os.environ if environ is None else environ
    path = Path(env.get("AWS_CONFIG_FILE") or "~/.aws/config").expanduser()
    full: dict[str, Any] = {"profiles": {}, "services": {}}
    if not path.is_file():
        return full
    parser = configparser.RawConfigParser()
    try:
        parser.read(path)
    except (configparser.Error, OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the AWS config file {path}: {e}") from None
    for section in parser.sections():
        values = {k: _nested(v) for k, v in parser.items(section)}
        parts = shlex.split(section) if '"' in section else section.split()
        if section == "default":
            full["profiles"]["default"] = values
        elif len(parts) == 2 and parts[0] == "profile":
            full["profiles"][parts[1]] = values
        elif len(parts) == 2 and parts[0] == "services":
            full["services"][parts[1]] = values
    return full


def _nested(value: str) -> str | dict[str, str]:
    if not value.startswith("\n"):
        return value
    nested: dict[str, str] = {}
    for line in value.splitlines():
        key, sep, val = line.partition("=")
        if sep:
            nested[key.strip()] = val.strip()
    return nested


class Configured(NamedTuple):
    """What the environment and the profile's config settle beyond credentials."""

    endpoint: str | None  # None: AWS's regional endpoint
    ca_bundle: str | None  # None: the system's trust store


def configured(
    known: Settings,
    scoped: Mapping[str, Any],
    full: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> Configured:
    """The endpoint and CA bundle for ``known`` (the arguments and the environment) and the
    selected profile (``scoped``, of the config ``full``), in botocore's order.

    Endpoint: the argument; unless ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`` (else the profile's
    ``ignore_configured_endpoint_urls``) is true: ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``,
    ``s3 = endpoint_url`` of the ``[services NAME]`` section the profile names in
    ``services``, the profile's ``endpoint_url``. CA bundle: ``AWS_CA_BUNDLE``, else the
    profile's ``ca_bundle``."""
    env = os.environ if environ is None else environ
    ignore = env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
    if ignore is None:
        ignore = str(scoped.get("ignore_configured_endpoint_urls", ""))
    endpoint = known.endpoint_arg
    if endpoint is None and ignore.strip().lower() != "true":
        endpoint = _env_endpoint(env)
        if endpoint is None:
            services = full.get("services", {}).get(scoped["services"], {}) if "services" in scoped else {}
            s3 = services.get("s3") if isinstance(services, dict) else None
            endpoint = (s3.get("endpoint_url") if isinstance(s3, dict) else None) or scoped.get(
                "endpoint_url"
            )
        endpoint = _check_endpoint(endpoint) if endpoint else None
    bundle = env.get("AWS_CA_BUNDLE") or scoped.get("ca_bundle") or None
    return Configured(endpoint, str(bundle) if bundle else None)


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """The TLS context of every connection to the endpoint: certificates checked against
    ``ca_bundle`` alone when one is set (as botocore does), else the system's trust store."""
    try:
        return ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(
            f"cannot load the CA bundle {ca_bundle!r} (AWS_CA_BUNDLE / ca_bundle): {e}"
        ) from None


# ---- proxies -------------------------------------------------------------------------------


class Proxy(NamedTuple):
    """An HTTP proxy: ``url`` without credentials, and the ``Proxy-Authorization`` value of
    the credentials it carried (or None)."""

    url: str
    host: str
    port: int
    authorization: str | None


def proxy_for(endpoint: str, environ: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy of requests to ``endpoint``, as botocore picks it: ``https_proxy`` for an
    https endpoint, ``http_proxy`` for http (the lowercase name wins over the uppercase one,
    ``HTTP_PROXY`` is ignored in a CGI request, as urllib does), None when ``no_proxy``
    covers the endpoint's host (urllib's matching: suffixes, ``*``, ports)."""
    env = os.environ if environ is None else environ
    proxies: dict[str, str] = {}
    for name, value in env.items():  # urllib.request.getproxies_environment, over `env`
        if value and name[-6:].lower() == "_proxy":
            proxies[name[:-6].lower()] = value
    if "REQUEST_METHOD" in env:
        proxies.pop("http", None)
    for name, value in env.items():
        if name[-6:] == "_proxy":
            if value:
                proxies[name[:-6].lower()] = value
            else:
                proxies.pop(name[:-6].lower(), None)
    parts = urlsplit(endpoint)
    url = proxies.get(parts.scheme)
    if not url:
        return None
    if "no" in proxies:
        # ~10 ms to import: only with a proxy set. (Not in typeshed, yet public: urllib uses it
        # as proxy_bypass on Linux, which botocore calls.)
        from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]

        if proxy_bypass_environment(parts.netloc, proxies):
            return None
    if "://" not in url:
        url = "http://" + url
    p = urlsplit(url)
    if p.scheme != "http" or not p.hostname:
        raise ConfigError(f"proxy {url!r} for {endpoint}: only http:// proxies are supported")
    auth = None
    if p.username is not None:
        user_pass = f"{unquote(p.username)}:{unquote(p.password or '')}"
        auth = "Basic " + base64.b64encode(user_pass.encode()).decode("ascii")
    host = p.hostname if ":" not in p.hostname else f"[{p.hostname}]"
    port = p.port or 80
    return Proxy(f"http://{host}:{port}", p.hostname, port, auth)


# ---- without botocore ----------------------------------------------------------------------


def config_has_s3_settings(environ: Mapping[str, str] | None = None, profile: str | None = None) -> bool:
    """Whether the selected profile of the AWS config file has an ``s3`` section (addressing
    style and the like), which only botocore reads."""
    scoped = load_config(environ)["profiles"].get(profile_name(profile, environ), {})
    return "s3" in scoped


class Settings(NamedTuple):
    """What an S3 store's arguments and the environment settle before any file or network
    is read: the region (None: the profile's config decides), the endpoint (None: the
    profile's config or AWS's regional one; ``endpoint_arg``: the argument alone) and the
    addressing style (``auto``: the config may set one)."""

    region: str | None
    endpoint: str | None
    addressing: Addressing
    endpoint_arg: str | None = None


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
    arg = _check_endpoint(endpoint_url) if endpoint_url else None
    given = endpoint_url if endpoint_url is not None else _env_endpoint(env)
    style = env.get("SYNCENGINE_S3_ADDRESSING")
    if addressing == "auto" and style:
        addressing = _addressing_setting(style, "SYNCENGINE_S3_ADDRESSING")
    return Settings(region, _check_endpoint(given) if given else None, addressing, arg)


class Static(NamedTuple):
    region: str
    endpoint: str
    credentials: StaticCredentials
    ca_bundle: str | None


def static_resolution(
    known: Settings,
    profile: str | None = None,
    explicit: StaticCredentials | None = None,
    environ: Mapping[str, str] | None = None,
) -> Static | None:
    """Region, endpoint, credentials and CA bundle without botocore, where they are the AWS
    chain's own answer: no profile passed explicitly, credentials given (``explicit``) or in
    the environment (`env_credentials`), the region known (or in the selected profile), the
    profile (named in ``AWS_PROFILE``) present in the config file unless it is ``default``,
    and no ``s3`` settings in it that only botocore would read (unless the addressing style
    is set already); else None."""
    if profile is not None:
        return None
    creds = explicit if explicit is not None else env_credentials(environ)
    if creds is None:
        return None
    try:
        full = load_config(environ)
    except ConfigError:
        return None  # botocore reports it
    name = profile_name(None, environ)
    scoped = full["profiles"].get(name)
    if scoped is None:
        if name != "default":
            return None  # botocore decides (the credentials file may define it, or it is missing)
        scoped = {}
    if known.addressing == "auto" and "s3" in scoped:
        return None
    region = known.region or scoped.get("region")
    if not isinstance(region, str) or not region:
        return None
    try:
        conf = configured(known, scoped, full, environ)
    except ConfigError:
        return None  # the full path reports it
    return Static(region, conf.endpoint or default_endpoint(region), creds, conf.ca_bundle)

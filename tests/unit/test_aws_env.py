"""syncengine.store.aws_env against botocore: for each environment (variables and a shared
config file), the endpoint, CA bundle, profile, credentials and proxy we resolve — from our
own reading of the config file (the path without botocore) and from botocore's parsed config
(S3Store's path with botocore) — are botocore's own answers."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from syncengine.errors import ConfigError
from syncengine.store.aws_env import (
    configured,
    env_credentials,
    load_config,
    profile_name,
    proxy_for,
    settings,
    static_resolution,
)

botocore_session = pytest.importorskip("botocore.session")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for k in list(os.environ):
        if k.startswith(("AWS_", "SYNCENGINE_S3_")) or k.lower().endswith("_proxy") or k == "REQUEST_METHOD":
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    return monkeypatch


SW = "[profile sw]\nendpoint_url = http://127.0.0.1:8333\nca_bundle = /etc/sw-ca.pem\nregion = ap-south-1\n"
SERVICES = (
    "[profile sw]\nservices = mine\nendpoint_url = http://global:1\n"
    "[services mine]\ns3 =\n  endpoint_url = http://svc:2\n"
)

#: (config file, environment): what each must resolve to is botocore's answer.
ENVIRONMENTS: list[tuple[str, dict[str, str]]] = [
    ("", {}),
    ("[default]\nendpoint_url = http://127.0.0.1:9000\n", {}),
    (SW, {"AWS_PROFILE": "sw"}),
    (SW, {}),  # the profile not selected: AWS's endpoint
    (SW, {"AWS_PROFILE": "sw", "AWS_ENDPOINT_URL_S3": "https://s3.example.com"}),
    (SW, {"AWS_PROFILE": "sw", "AWS_ENDPOINT_URL": "http://env-global:3"}),
    (SW, {"AWS_PROFILE": "sw", "AWS_ENDPOINT_URL_S3": "http://a:1", "AWS_ENDPOINT_URL": "http://b:2"}),
    (SW, {"AWS_PROFILE": "sw", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}),
    (SW, {"AWS_PROFILE": "sw", "AWS_CA_BUNDLE": "/env/ca.pem"}),
    (
        SW + "[profile other]\nendpoint_url = http://other:4\n",
        {"AWS_PROFILE": "sw", "AWS_DEFAULT_PROFILE": "other"},
    ),
    (SERVICES, {"AWS_PROFILE": "sw"}),  # a services section's s3 endpoint beats the profile's
    (SERVICES, {"AWS_PROFILE": "sw", "AWS_ENDPOINT_URL": "http://env-global:3"}),
    (
        "[default]\nignore_configured_endpoint_urls = true\nendpoint_url = http://x:5\n",
        {"AWS_ENDPOINT_URL_S3": "http://y:6"},
    ),
    ("[default]\ns3 =\n  endpoint_url = http://nested:7\n  addressing_style = path\n", {}),  # not botocore's
    ('[profile "q q"]\nendpoint_url = http://quoted:8\n', {"AWS_PROFILE": "q q"}),
]


def _write(tmp_path: Path, env: pytest.MonkeyPatch, config: str, variables: dict[str, str]) -> None:
    (tmp_path / "config").write_text(config)
    for k, v in variables.items():
        env.setenv(k, v)


@pytest.mark.parametrize(("config", "variables"), ENVIRONMENTS)
def test_endpoint_and_ca_bundle_are_botocores(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, config: str, variables: dict[str, str]
) -> None:
    _write(tmp_path, clean_env, config, variables)
    session = botocore_session.Session()
    client = session.create_client("s3", aws_access_key_id="k", aws_secret_access_key="s")
    theirs = client.meta.endpoint_url
    known = settings()
    full = load_config()
    scoped = full["profiles"].get(profile_name(), {})
    ours = configured(known, scoped, full)
    via_botocore = configured(known, session.get_scoped_config(), session.full_config)
    assert ours == via_botocore
    if ours.endpoint is None:
        assert urlsplit(theirs).hostname.endswith(".amazonaws.com")  # type: ignore[union-attr]
    else:
        assert ours.endpoint == theirs
    assert ours.ca_bundle == session.get_config_variable("ca_bundle")
    assert profile_name() == (session.get_config_variable("profile") or "default")
    client.close()


@pytest.mark.parametrize("variables", [{}, {"AWS_PROFILE": "sw"}, {"AWS_DEFAULT_PROFILE": "sw"}])
def test_environment_keys_are_the_chains_answer_whatever_profile_is_named(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, variables: dict[str, str]
) -> None:
    """AWS_PROFILE does not set the environment's keys aside (only a profile passed to the
    session does), so the path without botocore may take them with a profile selected."""
    (tmp_path / "credentials").write_text("[sw]\naws_access_key_id = FROMFILE\naws_secret_access_key = x\n")
    _write(
        tmp_path, clean_env, SW, {"AWS_ACCESS_KEY_ID": "FROMENV", "AWS_SECRET_ACCESS_KEY": "s", **variables}
    )
    theirs = botocore_session.Session().get_credentials().get_frozen_credentials()
    ours = env_credentials()
    assert ours is not None and (ours.access_key, ours.secret_key) == (theirs.access_key, theirs.secret_key)
    static = static_resolution(settings())
    assert static is not None and static.credentials == ours
    if variables:  # the profile's endpoint, CA bundle (region: AWS_DEFAULT_REGION is set)
        assert (static.endpoint, static.ca_bundle, static.region) == (
            "http://127.0.0.1:8333", "/etc/sw-ca.pem", "eu-west-1",
        )  # fmt: skip
    clean_env.delenv("AWS_DEFAULT_REGION")
    static = static_resolution(settings())  # the region from the profile, else botocore decides
    assert (static.region if static else None) == ("ap-south-1" if variables else None)


def test_a_profile_missing_from_the_config_file_is_left_to_botocore(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _write(
        tmp_path,
        clean_env,
        SW,
        {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s", "AWS_PROFILE": "nope"},
    )
    assert static_resolution(settings()) is None


PROXIES: list[tuple[str, dict[str, str]]] = [
    ("https://s3.eu-west-1.amazonaws.com", {"HTTPS_PROXY": "http://proxy:3128"}),
    ("https://s3.eu-west-1.amazonaws.com", {"HTTP_PROXY": "http://proxy:3128"}),  # not for https
    ("http://127.0.0.1:9000", {"HTTP_PROXY": "proxy:3128"}),  # no scheme: http
    ("http://127.0.0.1:9000", {"HTTP_PROXY": "http://proxy:3128", "NO_PROXY": "127.0.0.1"}),
    ("http://127.0.0.1:9000", {"http_proxy": "http://lower:1", "HTTP_PROXY": "http://upper:2"}),
    ("http://127.0.0.1:9000", {"http_proxy": "", "HTTP_PROXY": "http://upper:2"}),
    ("https://s3.example.com", {"https_proxy": "http://p:1", "no_proxy": ".example.com"}),
    ("https://s3.example.com", {"https_proxy": "http://p:1", "no_proxy": "other.com, example.com"}),
    ("https://s3.example.com:8443", {"https_proxy": "http://p:1", "no_proxy": "s3.example.com:8443"}),
    ("https://s3.example.com", {"https_proxy": "http://p:1", "no_proxy": "*"}),
    ("https://s3.example.com", {"https_proxy": "http://u%40x:p%3Aw@p:1"}),
    ("http://127.0.0.1:9000", {"HTTP_PROXY": "http://proxy:3128", "REQUEST_METHOD": "GET"}),  # CGI
]


@pytest.mark.parametrize(("endpoint", "variables"), PROXIES)
def test_the_proxy_is_botocores(
    clean_env: pytest.MonkeyPatch, endpoint: str, variables: dict[str, str]
) -> None:
    from botocore.httpsession import ProxyConfiguration
    from botocore.utils import get_environ_proxies

    for k, v in variables.items():
        clean_env.setenv(k, v)
    theirs = ProxyConfiguration(proxies=get_environ_proxies(endpoint)).proxy_url_for(endpoint)
    ours = proxy_for(endpoint)
    if theirs is None:
        assert ours is None
        return
    assert ours is not None
    t = urlsplit(theirs if "://" in theirs else "http://" + theirs)
    assert (ours.host, ours.port) == (t.hostname, t.port)
    if t.username:
        headers = ProxyConfiguration(proxies={"x": theirs}).proxy_headers_for(theirs)
        assert ours.authorization == headers["Proxy-Authorization"]
    else:
        assert ours.authorization is None


def test_an_https_proxy_is_refused_clearly(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("HTTPS_PROXY", "https://proxy:3128")
    with pytest.raises(ConfigError, match="only http:// proxies"):
        proxy_for("https://s3.example.com")

"""The standard AWS settings on every HTTP path of an S3 repository, against the real server:
a `put` (aiohttp), a `get` (the direct connections; aiohttp is not even loaded) and a
no-change re-`put` (the quick path, `s3_quick`) each honour ``HTTPS_PROXY``/``HTTP_PROXY``/
``NO_PROXY`` (through tests/connectproxy.py's proxy, which records every connection),
``AWS_CA_BUNDLE`` and the profile's ``ca_bundle`` (SeaweedFS behind a TLS relay with a
self-signed certificate), ``AWS_PROFILE`` with the config file's ``endpoint_url``, and
``AWS_ENDPOINT_URL_S3``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.connectproxy import ConnectProxy, TlsRelay, self_signed
from tests.integration.test_cli_startup import _RUN_AND_LIST_MODULES
from tests.integration.test_s3_repository import REPO_ROOT, s3_env
from tests.s3server import S3TestServer


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("aws-settings") / "data"
    for i in range(6):
        p = root / f"d{i % 2}" / f"f{i}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(2000 + i * 70_000))
    time.sleep(2.2)  # a put memo trusts only files older than 2 s when hashed (RACY_NS)
    return root


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    try:
        return self_signed(tmp_path_factory.mktemp("tls"))
    except RuntimeError as e:
        pytest.skip(str(e))


@pytest.fixture
def relay(s3_server: S3TestServer, cert: tuple[Path, Path]) -> Iterator[TlsRelay]:
    with TlsRelay(s3_server.endpoint, *cert) as r:
        yield r


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    with ConnectProxy() as p:
        yield p


def _run(env: dict[str, str], *args: str, modules: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    r = subprocess.run(
        [sys.executable, "-c", _RUN_AND_LIST_MODULES, str(modules), *args],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, f"{args} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r, set(modules.read_text().split())


def three_paths(env: dict[str, str], repo: str, data: Path, tmp: Path, after: object = None) -> list[str]:
    """put, get, no-change put; after each, ``after()`` (if given) is called with the step's
    name. Returns the step names, checking each went the way it should."""
    env = {**env, "SYNCENGINE_STATE_DIR": str(tmp / "state"), "SYNCENGINE_CACHE_DIR": str(tmp / "cache")}
    put = ["put", "-n", "proj/data", "-t", "dataset", str(data), "--repo", repo, "--json"]
    r, loaded = _run(env, *put, modules=tmp / "put.txt")
    assert json.loads(r.stdout)["created_now"] is True and "aiohttp" in loaded
    if callable(after):
        after("put")
    out = tmp / "out"
    _, loaded = _run(env, "get", "proj/data:v0", "--root", str(out), "--repo", repo, modules=tmp / "get.txt")
    assert "syncengine.store.s3_direct" in loaded and "aiohttp" not in loaded  # direct connections only
    for f in data.rglob("*.bin"):
        assert (out / f.relative_to(data)).read_bytes() == f.read_bytes()
    if callable(after):
        after("get")
    r, loaded = _run(env, *put, modules=tmp / "again.txt")
    assert json.loads(r.stdout)["created_now"] is False
    assert "syncengine.store.s3_quick" in loaded, "the no-change put did not take the quick path"
    assert not any(m.split(".")[0] in ("aiohttp", "botocore") for m in loaded)
    if callable(after):
        after("again")
    return ["put", "get", "again"]


def _env(server: S3TestServer, tmp: Path, config: str = "", **extra: str) -> dict[str, str]:
    env = s3_env(server)
    for k in list(env):
        if k.lower().endswith("_proxy"):
            del env[k]
    if config:
        (tmp / "aws-config").write_text(config)
        env["AWS_CONFIG_FILE"] = str(tmp / "aws-config")
    env.update(extra)
    return env


def test_an_https_proxy_carries_every_path(
    s3_server: S3TestServer,
    relay: TlsRelay,
    proxy: ConnectProxy,
    cert: tuple[Path, Path],
    data: Path,
    tmp_path: Path,
) -> None:
    """An https endpoint through HTTPS_PROXY: each step opens its connections as CONNECT
    tunnels, and every TLS connection the endpoint accepted came through the proxy."""
    env = _env(s3_server, tmp_path, AWS_ENDPOINT_URL=relay.endpoint, AWS_CA_BUNDLE=str(cert[0]))
    env["HTTPS_PROXY"] = proxy.url
    target = f"127.0.0.1:{relay.port}"

    def after(step: str) -> None:
        assert proxy.tunnels and set(proxy.tunnels) == {target}, step
        assert relay.connections == len(proxy.tunnels), f"{step}: a connection bypassed the proxy"
        seen.append(len(proxy.tunnels))

    seen: list[int] = []
    three_paths(env, f"s3://{s3_server.new_bucket()}/r", data, tmp_path, after)
    assert seen[0] < seen[1] < seen[2]  # each step went through it


def test_an_http_proxy_carries_every_path_and_no_proxy_bypasses_it(
    s3_server: S3TestServer, proxy: ConnectProxy, data: Path, tmp_path: Path
) -> None:
    """A plain-http endpoint through HTTP_PROXY (requests in absolute form, as urllib3 sends
    them); with NO_PROXY covering 127.0.0.1 the proxy sees nothing."""
    env = _env(s3_server, tmp_path / "a", HTTP_PROXY=proxy.url)
    (tmp_path / "a").mkdir()
    counts: list[int] = []
    three_paths(
        env,
        f"s3://{s3_server.new_bucket()}/r",
        data,
        tmp_path / "a",
        lambda _s: counts.append(len(proxy.forwarded)),
    )
    host = s3_server.endpoint.split("//", 1)[1]
    assert set(proxy.forwarded) == {host} and 0 < counts[0] < counts[1] < counts[2]

    (tmp_path / "b").mkdir()
    before = len(proxy.forwarded)
    env = _env(s3_server, tmp_path / "b", http_proxy=proxy.url, NO_PROXY="localhost,127.0.0.1")
    three_paths(env, f"s3://{s3_server.new_bucket()}/r", data, tmp_path / "b")
    assert len(proxy.forwarded) == before and not proxy.tunnels


def test_the_ca_bundle_from_the_environment_or_the_profile_is_trusted_on_every_path(
    s3_server: S3TestServer, relay: TlsRelay, cert: tuple[Path, Path], data: Path, tmp_path: Path
) -> None:
    for d in ("env", "profile"):
        (tmp_path / d).mkdir()
    env = _env(s3_server, tmp_path, AWS_ENDPOINT_URL=relay.endpoint)
    bucket = s3_server.new_bucket()
    refused = subprocess.run(
        [sys.executable, "-m", "syncengine", "ls", "--repo", f"s3://{bucket}/r"],
        capture_output=True, text=True, env={**env, "SYNCENGINE_STATE_DIR": str(tmp_path / "st")},
        cwd=REPO_ROOT, timeout=300,
    )  # fmt: skip
    assert refused.returncode != 0 and "certificate" in refused.stderr.lower(), refused.stderr
    three_paths({**env, "AWS_CA_BUNDLE": str(cert[0])}, f"s3://{bucket}/r", data, tmp_path / "env")

    config = f"[profile tls]\nendpoint_url = {relay.endpoint}\nca_bundle = {cert[0]}\n"
    env = _env(s3_server, tmp_path / "profile", config, AWS_PROFILE="tls")
    del env["AWS_ENDPOINT_URL"]
    three_paths(env, f"s3://{s3_server.new_bucket()}/r", data, tmp_path / "profile")


def test_the_profiles_endpoint_url_and_aws_endpoint_url_s3_are_used_on_every_path(
    s3_server: S3TestServer, data: Path, tmp_path: Path
) -> None:
    for d in ("profile", "services", "s3var"):
        (tmp_path / d).mkdir()
    # AWS_PROFILE selects a profile whose endpoint_url is the server (none in the environment)
    config = (
        f"[default]\nendpoint_url = http://127.0.0.1:1\n[profile sw]\nendpoint_url = {s3_server.endpoint}\n"
    )
    env = _env(s3_server, tmp_path / "profile", config, AWS_PROFILE="sw")
    del env["AWS_ENDPOINT_URL"]
    three_paths(env, f"s3://{s3_server.new_bucket()}/r", data, tmp_path / "profile")
    # a services section's s3 endpoint_url beats the profile's own
    config = (
        "[profile sw]\nendpoint_url = http://127.0.0.1:1\nservices = local\n"
        f"[services local]\ns3 =\n  endpoint_url = {s3_server.endpoint}\n"
    )
    env = _env(s3_server, tmp_path / "services", config, AWS_PROFILE="sw")
    del env["AWS_ENDPOINT_URL"]
    three_paths(env, f"s3://{s3_server.new_bucket()}/r", data, tmp_path / "services")
    # AWS_ENDPOINT_URL_S3 beats AWS_ENDPOINT_URL (and the config file)
    env = _env(
        s3_server, tmp_path / "s3var", config, AWS_ENDPOINT_URL="http://127.0.0.1:1",
        AWS_ENDPOINT_URL_S3=s3_server.endpoint,
    )  # fmt: skip
    three_paths(env, f"s3://{s3_server.new_bucket()}/r", data, tmp_path / "s3var")

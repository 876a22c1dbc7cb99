"""S3Store behaviour beyond the shared contract: configuration, credentials, errors, retries.

Tests marked by their fixtures: ``s3_server`` ones run against the real SeaweedFS server
(tests/s3server.py); ``fake`` ones against a small aiohttp S3 stand-in started on
127.0.0.1 inside the test, which answers as scripted (503s, resets, stalls) so the retry
policy can be watched request by request. Unit tests need neither.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from syncengine.errors import (
    BucketNotFound,
    ConditionalWritesUnsupported,
    ConfigError,
    ObjectChanged,
    ObjectNotFound,
    PreconditionFailed,
    PreconditionFailedAfterRetry,
    StoreAccessDenied,
    StoreRequestFailed,
    StoreUnavailable,
    SyncEngineError,
)
from syncengine.store import LocalStore, RetryPolicy, S3Store, open_store
from syncengine.store.retry import AttemptGuard, Transient
from syncengine.store.s3 import choose_addressing, default_endpoint, object_url
from tests.s3server import S3TestServer

from .conftest import s3_environment

FAST = RetryPolicy(max_attempts=4, base_delay=0.0, throttle_delay=0.0, stall_timeout=1.0, deadline=60.0)


def unique_prefix() -> str:
    return f"s3t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def clean_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AWS settings from the machine: empty credential/config files, no metadata service."""
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)
    aws = tmp_path / "aws-empty"
    aws.mkdir()
    (aws / "credentials").write_text("")
    (aws / "config").write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(aws / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws / "config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return aws


# ---- URLs, endpoints, configuration (no server) -----------------------------------------


def test_object_url_path_style_encodes_keys_like_sigv4() -> None:
    ep = "http://127.0.0.1:9000"
    assert object_url(ep, "bkt", "a/b c/ü~x") == "http://127.0.0.1:9000/bkt/a/b%20c/%C3%BC~x"
    assert object_url(ep, "bkt", "q?#%&=+") == "http://127.0.0.1:9000/bkt/q%3F%23%25%26%3D%2B"
    assert object_url(ep, "bkt") == "http://127.0.0.1:9000/bkt"
    assert object_url(ep, "bkt", "k", query=[("uploads", None)]) == "http://127.0.0.1:9000/bkt/k?uploads"
    assert (
        object_url(ep, "bkt", "", query=[("list-type", "2"), ("prefix", "a b/+"), ("delimiter", "/")])
        == "http://127.0.0.1:9000/bkt?list-type=2&prefix=a%20b%2F%2B&delimiter=%2F"
    )
    # An endpoint with a path (a server behind a reverse proxy) keeps it.
    assert object_url("https://gw.example/s3/", "bkt", "k") == "https://gw.example/s3/bkt/k"


def test_object_url_virtual_hosted() -> None:
    ep = default_endpoint("eu-west-1")
    assert ep == "https://s3.eu-west-1.amazonaws.com"
    url = object_url(ep, "my-bucket", "dir/file name", addressing="virtual", query=[("partNumber", "3")])
    assert url == "https://my-bucket.s3.eu-west-1.amazonaws.com/dir/file%20name?partNumber=3"
    assert default_endpoint("cn-north-1") == "https://s3.cn-north-1.amazonaws.com.cn"


def test_choose_addressing() -> None:
    aws = "https://s3.us-east-1.amazonaws.com"
    assert choose_addressing("http://127.0.0.1:9000", "bkt") == "path"
    assert choose_addressing("http://localhost:9000", "bkt") == "path"
    assert choose_addressing("http://[::1]:9000", "bkt") == "path"
    assert choose_addressing("https://minio.internal.example", "bkt") == "path"
    assert choose_addressing(aws, "bkt") == "virtual"
    assert choose_addressing(aws, "dotted.bucket.name") == "path"  # TLS wildcard cannot cover it
    assert choose_addressing(aws, "Upper_Case") == "path"  # not a DNS label
    assert choose_addressing("http://127.0.0.1:9000", "bkt", "virtual") == "virtual"
    assert choose_addressing(aws, "bkt", "path") == "path"
    with pytest.raises(ConfigError):
        choose_addressing(aws, "bkt", "sideways")  # type: ignore[arg-type]


def test_endpoint_and_region_resolution(monkeypatch: pytest.MonkeyPatch, clean_aws_env: Path) -> None:
    assert S3Store("bkt", region="ap-south-1").endpoint == "https://s3.ap-south-1.amazonaws.com"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-north-1")
    assert S3Store("bkt").endpoint == "https://s3.eu-north-1.amazonaws.com"
    monkeypatch.setenv("AWS_REGION", "eu-central-1")  # AWS_REGION wins over AWS_DEFAULT_REGION
    assert S3Store("bkt").region == "eu-central-1"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert S3Store("bkt").endpoint == "http://127.0.0.1:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2/")  # the S3-specific one wins
    assert S3Store("bkt").endpoint == "http://127.0.0.1:2"
    assert S3Store("bkt", endpoint_url="http://127.0.0.1:3").endpoint == "http://127.0.0.1:3"
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    assert S3Store("bkt").endpoint == "https://s3.eu-central-1.amazonaws.com"


def test_configuration_errors() -> None:
    ep = "http://127.0.0.1:9"
    for bad in ["", "ab", "has space", "a/b"]:
        with pytest.raises(ConfigError):
            S3Store(bad, endpoint_url=ep)
    for bad_prefix in ["../up", "a//b", ".se-store"]:
        with pytest.raises(ConfigError):
            S3Store("bkt", bad_prefix, endpoint_url=ep)
    for bad_ep in ["ftp://host", "127.0.0.1:9000", "http://u:p@host", "http://host?x=1"]:
        with pytest.raises(ConfigError):
            S3Store("bkt", endpoint_url=bad_ep)
    with pytest.raises(ConfigError):
        S3Store("bkt", endpoint_url=ep, access_key_id="only-the-id")
    with pytest.raises(ConfigError):
        S3Store("bkt", endpoint_url=ep, list_page_size=0)
    assert S3Store("bkt", "/a/b/", endpoint_url=ep).prefix == "a/b/"


def test_open_store_maps_urls(tmp_path: Path) -> None:
    s3 = open_store("s3://bkt/team/repo", endpoint_url="http://127.0.0.1:9", region="eu-west-1")
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.endpoint, s3.region) == (
        "bkt",
        "team/repo/",
        "http://127.0.0.1:9",
        "eu-west-1",
    )
    assert isinstance(open_store("s3://bkt", endpoint_url="http://127.0.0.1:9"), S3Store)
    local = open_store(str(tmp_path / "repo"))
    assert isinstance(local, LocalStore) and local.root == str(tmp_path / "repo")
    local2 = open_store(f"file://{tmp_path}/repo%20two")
    assert isinstance(local2, LocalStore) and local2.root == str(tmp_path / "repo two")
    for bad in ["s3:///prefix", "gs://bucket/x", "file://otherhost/x"]:
        with pytest.raises(ConfigError):
            open_store(bad)


def test_repr_never_shows_explicit_credentials() -> None:
    store = S3Store(
        "bkt",
        endpoint_url="http://127.0.0.1:9",
        access_key_id="AKIDEXAMPLE",
        secret_access_key="very-secret-value",
        session_token="session-token-value",
    )
    text = repr(store) + repr(vars(store)) + str(store.counters)
    assert "very-secret-value" not in text and "session-token-value" not in text


def test_retry_policy_from_env_and_validation() -> None:
    p = RetryPolicy.from_env(
        {
            "SYNCENGINE_S3_MAX_ATTEMPTS": "3",
            "SYNCENGINE_S3_STALL_TIMEOUT": "0.25",
            "SYNCENGINE_S3_DEADLINE": "",
        }
    )
    assert (p.max_attempts, p.stall_timeout, p.deadline) == (3, 0.25, RetryPolicy().deadline)
    assert RetryPolicy.from_env({"SYNCENGINE_S3_MAX_ATTEMPTS": "3"}, max_attempts=7).max_attempts == 7
    with pytest.raises(ConfigError, match="SYNCENGINE_S3_MAX_ATTEMPTS"):
        RetryPolicy.from_env({"SYNCENGINE_S3_MAX_ATTEMPTS": "many"})
    with pytest.raises(ConfigError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigError):
        RetryPolicy(stall_timeout=0)
    with pytest.raises(ConfigError):
        RetryPolicy(base_delay=float("nan"))


def test_store_reads_retry_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCENGINE_S3_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("SYNCENGINE_S3_STALL_TIMEOUT", "1.5")
    store = S3Store("bkt", endpoint_url="http://127.0.0.1:9")
    assert (store.retry_policy.max_attempts, store.retry_policy.stall_timeout) == (2, 1.5)
    assert S3Store("bkt", endpoint_url="http://127.0.0.1:9", retry=FAST).retry_policy is FAST


def test_backoff_is_full_jitter_and_honours_retry_after() -> None:
    import random

    p = RetryPolicy(base_delay=0.5, max_delay=4.0, throttle_delay=2.0, max_retry_after=10.0)
    rng = random.Random(7)
    for retry in range(1, 12):
        ceiling = min(4.0, 0.5 * 2 ** (retry - 1))
        waits = [p.delay(retry, throttled=False, retry_after=None, rng=rng) for _ in range(200)]
        assert all(0.0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling * 0.8 and min(waits) < ceiling * 0.2  # spread over the range
    assert all(p.delay(1, throttled=True, retry_after=None, rng=rng) <= 2.0 for _ in range(100))
    assert all(3.0 <= p.delay(1, throttled=False, retry_after=3.0, rng=rng) <= 3.0 + 0.5 for _ in range(50))
    assert p.delay(1, throttled=False, retry_after=3600.0, rng=rng) <= 10.0  # capped


async def test_attempt_guard_ends_long_and_stalled_attempts_only() -> None:
    # Bytes keep moving, but the attempt outlives attempt_timeout.
    with pytest.raises(Transient, match="longer than"):
        async with AttemptGuard(attempt_timeout=0.3, stall_timeout=10.0) as guard:
            while True:
                guard.progress()
                await asyncio.sleep(0.01)
    # Nothing moves for stall_timeout.
    with pytest.raises(Transient, match="stalled"):
        async with AttemptGuard(attempt_timeout=10.0, stall_timeout=0.2):
            await asyncio.Event().wait()
    # A cancellation from outside stays a cancellation (not a retry).
    entered = asyncio.Event()

    async def waits() -> None:
        async with AttemptGuard(attempt_timeout=10.0, stall_timeout=10.0):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(waits())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# ---- the real server: credentials, errors, prefixes, listing -----------------------------


@pytest.fixture
def bucket(contract_bucket: str) -> str:
    return contract_bucket


async def test_wrong_secret_fails_at_once_without_leaking_it(
    s3_server: S3TestServer, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "WRONG-secret-" + uuid.uuid4().hex
    token = "TOKEN-secret-" + uuid.uuid4().hex
    caplog.set_level(logging.DEBUG)
    messages: list[str] = []
    for session_token in (None, token):
        store = S3Store(
            bucket,
            unique_prefix(),
            endpoint_url=s3_server.endpoint,
            access_key_id=s3_server.access_key,
            secret_access_key=secret,
            session_token=session_token,
            retry=FAST,
        )
        async with store:
            with pytest.raises(StoreAccessDenied) as ei:
                await store.put("k", b"v")
            assert store.counters.requests == 1  # no retry storm
            assert store.counters.retries == 0
            err = ei.value
            assert isinstance(err, PermissionError) and isinstance(err, SyncEngineError)
            assert bucket in str(err) and s3_server.endpoint in str(err)
            messages += [str(err), repr(err), repr(store), repr(store.counters)]
            for op in (store.get("k"), store.head("k"), store.delete(["k"])):
                with pytest.raises(StoreAccessDenied) as ei2:
                    await op
                messages += [str(ei2.value), repr(ei2.value)]
            with pytest.raises(StoreAccessDenied) as ei3:
                _ = [i async for i in store.list()]
            messages += [str(ei3.value)]
    messages += [r.getMessage() for r in caplog.records] + [str(r.args) for r in caplog.records]
    assert caplog.records, "the check needs log records to look at"
    for text in messages:
        assert secret not in text and token not in text


async def test_missing_bucket_is_a_clear_error(s3_server: S3TestServer) -> None:
    name = f"missing-{uuid.uuid4().hex[:10]}"
    async with S3Store(
        name,
        endpoint_url=s3_server.endpoint,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
        retry=FAST,
    ) as store:
        # (Writes are not tried: SeaweedFS creates a missing bucket on a PUT by an admin.)
        with pytest.raises(BucketNotFound, match=name) as ei:
            await store.get("k")
        assert "does not exist" in str(ei.value) and isinstance(ei.value, FileNotFoundError)
        with pytest.raises(BucketNotFound, match=name):
            _ = [i async for i in store.list()]
        with pytest.raises(BucketNotFound, match=name):
            await store.list_multipart_uploads()
        assert store.counters.retries == 0


async def test_credentials_and_endpoint_from_environment(
    s3_server: S3TestServer, bucket: str, monkeypatch: pytest.MonkeyPatch, clean_aws_env: Path
) -> None:
    for var, value in s3_server.env().items():  # keys, region and AWS_ENDPOINT_URL
        monkeypatch.setenv(var, value)
    async with S3Store(bucket, unique_prefix()) as store:
        assert store.endpoint == s3_server.endpoint
        await store.put("from-env", b"ok")
        assert await store.get("from-env") == b"ok"
        assert store._cred_source == "env"


async def test_credentials_from_shared_file_and_aws_profile(
    s3_server: S3TestServer, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def setup() -> None:
        s3_environment(monkeypatch, tmp_path, s3_server.access_key, s3_server.secret_key, "team-profile")
        (tmp_path / "aws" / "config").write_text("[profile team-profile]\nregion = eu-west-3\n")

    await asyncio.to_thread(setup)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_PROFILE", "team-profile")
    async with S3Store(bucket, unique_prefix(), endpoint_url=s3_server.endpoint) as store:
        await store.put("from-file", b"ok")
        assert store.region == "eu-west-3"  # read from the profile's config
        assert store._cred_source == "shared-credentials-file"
    # The profile can also be named explicitly (then the environment's AWS_PROFILE is not used).
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    async with S3Store(bucket, unique_prefix(), endpoint_url=s3_server.endpoint, profile="team-profile") as s:
        await s.put("k", b"v")
    async with S3Store(bucket, unique_prefix(), endpoint_url=s3_server.endpoint) as s:
        with pytest.raises(StoreAccessDenied, match="no-such-profile"):
            await s.put("k", b"v")


async def test_addressing_style_from_settings(
    s3_server: S3TestServer, bucket: str, monkeypatch: pytest.MonkeyPatch, clean_aws_env: Path
) -> None:
    """The argument, then SYNCENGINE_S3_ADDRESSING, then the profile's s3.addressing_style."""
    for var, value in s3_server.env().items():
        monkeypatch.setenv(var, value)
    config = clean_aws_env / "config"
    await asyncio.to_thread(config.write_text, "[default]\ns3 =\n    addressing_style = virtual\n")
    async with S3Store(bucket, unique_prefix()) as store:
        await store._ready()
        assert store._addressing == "virtual"  # as botocore's config asks, even off AWS
    monkeypatch.setenv("SYNCENGINE_S3_ADDRESSING", "path")
    async with S3Store(bucket, unique_prefix()) as store:
        await store.put("k", b"v")  # path-style works against the test server
        assert store._addressing == "path"
    monkeypatch.setenv("SYNCENGINE_S3_ADDRESSING", "virtual")
    async with S3Store(bucket, unique_prefix(), addressing="path") as store:
        await store._ready()
        assert store._addressing == "path"  # the argument wins
    monkeypatch.setenv("SYNCENGINE_S3_ADDRESSING", "sideways")
    with pytest.raises(ConfigError, match="SYNCENGINE_S3_ADDRESSING"):
        S3Store(bucket)
    monkeypatch.delenv("SYNCENGINE_S3_ADDRESSING")
    await asyncio.to_thread(config.write_text, "[default]\ns3 =\n    addressing_style = diagonal\n")
    async with S3Store(bucket, unique_prefix()) as store:
        with pytest.raises(ConfigError, match="addressing_style"):
            await store._ready()


async def test_no_credentials_anywhere(s3_server: S3TestServer, bucket: str, clean_aws_env: Path) -> None:
    async with S3Store(bucket, endpoint_url=s3_server.endpoint, retry=FAST) as store:
        with pytest.raises(StoreAccessDenied, match="no AWS credentials found") as ei:
            await store.get("k")
        assert "AWS_ACCESS_KEY_ID" in str(ei.value)
        assert store.counters.requests == 0


CREDENTIAL_PROCESS = """\
import datetime, json, pathlib, sys
calls = pathlib.Path(sys.argv[1])
calls.write_text(str(int(calls.read_text() or 0) + 1) if calls.exists() else "1")
soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)
print(json.dumps({"Version": 1, "AccessKeyId": sys.argv[2], "SecretAccessKey": sys.argv[3],
                  "Expiration": soon.strftime("%Y-%m-%dT%H:%M:%SZ")}))
"""


async def test_temporary_credentials_are_refreshed_off_the_loop(
    s3_server: S3TestServer, bucket: str, monkeypatch: pytest.MonkeyPatch, clean_aws_env: Path
) -> None:
    # credential_process answers credentials that expire in 5 minutes: inside botocore's
    # refresh window, so the store must fetch fresh ones (in a worker thread) as it goes.
    script, calls = clean_aws_env / "creds.py", clean_aws_env / "calls"
    args = f"{script} {calls} {s3_server.access_key} {s3_server.secret_key}"
    config = f"[profile temp]\ncredential_process = {sys.executable} {args}\n"

    def write() -> None:
        script.write_text(CREDENTIAL_PROCESS)
        (clean_aws_env / "config").write_text(config)

    await asyncio.to_thread(write)
    async with S3Store(bucket, unique_prefix(), endpoint_url=s3_server.endpoint, profile="temp") as store:
        for i in range(3):
            await store.put(f"k{i}", b"v")
        assert store._cred_source == "custom-process"
    assert int(await asyncio.to_thread(calls.read_text)) >= 3  # fetched, then refreshed


async def test_prefixes_isolate_stores_in_one_bucket(s3_server: S3TestServer, bucket: str) -> None:
    def make(prefix: str) -> S3Store:
        return S3Store(
            bucket,
            prefix,
            endpoint_url=s3_server.endpoint,
            access_key_id=s3_server.access_key,
            secret_access_key=s3_server.secret_key,
        )

    base = unique_prefix()
    async with make(f"{base}/one") as one, make(f"{base}/one-more") as two, make(base) as outer:
        await one.put("k", b"1")
        await two.put("k", b"2")
        up = await one.create_multipart("big")
        assert [i.key async for i in one.list()] == ["k"]
        assert [i.key async for i in two.list()] == ["k"]
        assert await two.list_multipart_uploads() == []
        assert [u.upload_id for u in await one.list_multipart_uploads()] == [up]
        assert [i.key async for i in outer.list()] == ["one-more/k", "one/k"]
        await two.delete(["k"])
        assert await one.get("k") == b"1"
        with pytest.raises(ObjectNotFound):
            await two.get("k")
        await one.abort_multipart("big", up)


async def test_listing_pages_with_small_page_size(s3_server: S3TestServer, bucket: str) -> None:
    keys = ["a", "a-b", "a.b", "a/b", "a/c/d", "a0", "b/x/y/z", "b/x-", "é", "~"]
    keys += [f"m/{i:02d}" for i in range(9)]
    prefix = unique_prefix()
    common = {
        "endpoint_url": s3_server.endpoint,
        "access_key_id": s3_server.access_key,
        "secret_access_key": s3_server.secret_key,
    }
    async with S3Store(bucket, prefix, list_page_size=2, list_strategy="walk", **common) as store:  # type: ignore[arg-type]
        for k in keys:
            await store.put(k, k.encode())
        before = store.counters.requests
        listed = [i.key async for i in store.list()]
        assert listed == sorted(keys, key=lambda k: k.encode())
        assert store.counters.requests - before >= len(keys) // 2  # really paged
        assert [i.key async for i in store.list("m/0")] == [f"m/{i:02d}" for i in range(9)]
        assert [i.key async for i in store.list("a")] == ["a", "a-b", "a.b", "a/b", "a/c/d", "a0"]
    # A flat listing pages with continuation tokens too (keys the server orders plainly).
    async with S3Store(bucket, prefix, list_page_size=2, list_strategy="flat", **common) as flat:  # type: ignore[arg-type]
        before = flat.counters.requests
        assert [i.key async for i in flat.list("m/")] == [f"m/{i:02d}" for i in range(9)]
        assert flat.counters.requests - before == 5


async def test_conditional_write_probe_passes_and_cleans_up(s3_server: S3TestServer, bucket: str) -> None:
    prefix = unique_prefix()
    async with S3Store(
        bucket,
        prefix,
        endpoint_url=s3_server.endpoint,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
    ) as store:
        await store.check_conditional_writes()
        assert [i async for i in store.list()] == []
        async with S3Store(
            bucket,
            endpoint_url=s3_server.endpoint,
            access_key_id=s3_server.access_key,
            secret_access_key=s3_server.secret_key,
            list_strategy="flat",
        ) as whole:
            raw = [k async for k in whole._pages(prefix + "/", delimiter=False)]
            assert all(not page.objects for page in raw)


async def test_counters_track_bytes(s3_server: S3TestServer, bucket: str) -> None:
    async with S3Store(
        bucket,
        unique_prefix(),
        endpoint_url=s3_server.endpoint,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
    ) as store:
        data = os.urandom(3 << 20)
        await store.put("k", data)
        assert store.counters.bytes_sent == len(data)
        assert await store.get("k", range=(10, 1010)) == data[10:1010]
        assert store.counters.bytes_received == 1000
        assert store.counters.requests == 2


# ---- a scripted stand-in server: retries, stalls, resumes --------------------------------


class FakeS3:
    """A minimal S3 for one bucket that can misbehave on cue.

    ``script`` holds actions consumed one per request; an empty script means "behave".
    Actions: ``("error", status, code, headers)``, ``"reset"`` (drop the connection),
    ``"hang"`` (never answer), ``"store-then-reset"`` (apply the write, then drop the
    connection), ``("partial", n)`` (GET: send the headers and n body bytes, then hang),
    ``("replace", body, write_id)`` (someone else overwrites the key, then behave), ``"chunked"``
    (GET: the body in chunked transfer coding), ``"close"`` (GET: ``Connection: close``).
    ``peers`` holds the client port of each request (which connection it came on).
    """

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str, str | None]] = {}  # key -> (body, etag, write id)
        self.script: list[Any] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.peers: list[int] = []
        self.ignore_conditions = False
        self.bodies: list[bytes] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = request.path.split("/", 2)[2] if request.path.count("/") >= 2 else ""
        self.requests.append((request.method, key, dict(request.headers)))
        assert request.transport is not None
        self.peers.append(request.transport.get_extra_info("peername")[1])
        action = self.script.pop(0) if self.script else None
        if isinstance(action, tuple) and action[0] == "replace":
            body = action[1]
            self.objects[key] = (body, hashlib.md5(body).hexdigest(), action[2])
            action = None
        if action == "reset":
            await request.read()
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if action == "hang":
            await asyncio.Event().wait()
        if isinstance(action, tuple) and action[0] == "error":
            _, status, code, headers = action
            body = await request.read()
            if request.method == "PUT":
                self.bodies.append(body)
            xml = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>scripted</Message></Error>"
            return web.Response(status=status, body=xml.encode(), headers=headers)
        if request.method == "PUT":
            return await self._put(request, key, store_then_reset=action == "store-then-reset")
        if request.method in ("GET", "HEAD"):
            return await self._get(request, key, action)
        return web.Response(status=501)

    async def _put(self, request: web.Request, key: str, *, store_then_reset: bool) -> web.StreamResponse:
        body = await request.read()
        self.bodies.append(body)
        current = self.objects.get(key)
        if not self.ignore_conditions:
            if request.headers.get("If-None-Match") == "*" and current is not None:
                return web.Response(status=412, body=b"<Error><Code>PreconditionFailed</Code></Error>")
            if_match = request.headers.get("If-Match")
            if if_match is not None and (current is None or f'"{current[1]}"' != if_match):
                return web.Response(status=412, body=b"<Error><Code>PreconditionFailed</Code></Error>")
        etag = hashlib.md5(body).hexdigest()
        self.objects[key] = (body, etag, request.headers.get("x-amz-meta-syncengine-write-id"))
        if store_then_reset:
            assert request.transport is not None
            request.transport.abort()
        return web.Response(headers={"ETag": f'"{etag}"'})

    async def _get(self, request: web.Request, key: str, action: Any) -> web.StreamResponse:
        if key not in self.objects:
            return web.Response(status=404, body=b"<Error><Code>NoSuchKey</Code></Error>")
        body, etag, write_id = self.objects[key]
        if request.headers.get("If-Match") not in (None, f'"{etag}"'):
            return web.Response(status=412, body=b"<Error><Code>PreconditionFailed</Code></Error>")
        headers = {"ETag": f'"{etag}"', "Last-Modified": "Mon, 02 Jan 2023 03:04:05 GMT"}
        if write_id:
            headers["x-amz-meta-syncengine-write-id"] = write_id
        start, end, status = 0, len(body), 200
        rng = request.headers.get("Range")
        if rng:
            a, _, b = rng.removeprefix("bytes=").partition("-")
            start, end, status = int(a), min(int(b) + 1, len(body)), 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(body)}"
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return web.Response(headers=headers)
        if action == "close":
            headers["Connection"] = "close"
        resp = web.StreamResponse(status=status, headers=headers)
        if action == "chunked":
            resp.enable_chunked_encoding()
        else:
            resp.content_length = end - start
        await resp.prepare(request)
        if isinstance(action, tuple) and action[0] == "partial":
            await resp.write(body[start : start + action[1]])
            await asyncio.Event().wait()
        await resp.write(body[start:end])
        return resp


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeS3, str]]:
    server = FakeS3()
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield server, f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def fake_store(endpoint: str, **kw: Any) -> S3Store:
    kw.setdefault("retry", FAST)
    return S3Store("bkt", endpoint_url=endpoint, access_key_id="AKID", secret_access_key="SECRET", **kw)


async def test_retries_503_slowdown_honouring_retry_after(fake: tuple[FakeS3, str]) -> None:
    server, ep = fake
    server.script = [("error", 503, "SlowDown", {"Retry-After": "0"}), ("error", 500, "InternalError", {})]
    async with fake_store(ep) as store:
        info = await store.put("k", b"payload")
        assert info.size == 7
        assert (store.counters.requests, store.counters.retries) == (3, 2)
    assert server.objects["k"][0] == b"payload"


async def test_retries_connection_resets(fake: tuple[FakeS3, str]) -> None:
    server, ep = fake
    server.objects["k"] = (b"data", hashlib.md5(b"data").hexdigest(), None)
    server.script = ["reset", "reset"]
    async with fake_store(ep) as store:
        assert await store.get("k") == b"data"
        assert store.counters.retries == 2


async def test_stalled_attempt_is_abandoned_and_retried(fake: tuple[FakeS3, str]) -> None:
    server, ep = fake
    server.script = ["hang"]
    async with fake_store(ep) as store:
        await store.put("k", b"v")
        assert (store.counters.requests, store.counters.retries) == (2, 1)
    assert server.objects["k"][0] == b"v"


async def test_read_resumes_after_a_stall_pinned_to_its_version(fake: tuple[FakeS3, str]) -> None:
    server, ep = fake
    data = os.urandom(300_000)
    server.objects["k"] = (data, hashlib.md5(data).hexdigest(), None)
    server.script = [("partial", 100_000)]
    async with fake_store(ep) as store:
        assert await store.get("k") == data
        resumed = server.requests[-1][2]
        assert resumed["Range"].startswith("bytes=") and resumed["Range"] != "bytes=0-299999"
        assert resumed["If-Match"] == f'"{server.objects["k"][1]}"'
        # The object changes while a read waits to resume: the reader refuses to mix versions.
        server.script = [("partial", 100_000), ("replace", b"new" * 1000, None)]
        with pytest.raises(ObjectChanged):
            await store.get("k")


async def test_non_retryable_errors_surface_at_once(fake: tuple[FakeS3, str]) -> None:
    server, ep = fake
    async with fake_store(ep) as store:
        cases: list[tuple[Any, type[Exception]]] = [
            (("error", 403, "AccessDenied", {}), StoreAccessDenied),
            (("error", 400, "InvalidArgument", {}), StoreRequestFailed),
            (("error", 404, "NoSuchKey", {}), ObjectNotFound),
            (("error", 404, "NoSuchBucket", {}), BucketNotFound),
            (("error", 301, "PermanentRedirect", {"x-amz-bucket-region": "eu-west-1"}), StoreRequestFailed),
        ]
        for action, expected in cases:
            server.script = [action]
            before = store.counters.requests
            with pytest.raises(expected):
                await store.get("k")
            assert store.counters.requests - before == 1, action
        server.objects["k"] = (b"x", hashlib.md5(b"x").hexdigest(), None)
        before = store.counters.requests
        with pytest.raises(PreconditionFailed) as ei:
            await store.put("k", b"y", if_none_match=True)
        assert not isinstance(ei.value, PreconditionFailedAfterRetry)
        assert store.counters.requests - before == 1
        server.script = [("error", 301, "PermanentRedirect", {"x-amz-bucket-region": "eu-west-1"})]
        with pytest.raises(StoreRequestFailed, match="eu-west-1"):
            await store.head("k")


async def test_gives_up_after_max_attempts(fake: tuple[FakeS3, str]) -> None:
    server, ep = fake
    server.script = [("error", 500, "InternalError", {})] * 10
    async with fake_store(ep) as store:
        with pytest.raises(StoreUnavailable) as ei:
            await store.put("k", b"v")
        assert store.counters.requests == FAST.max_attempts
        text = str(ei.value)
        assert "4 attempt(s)" in text and "InternalError" in text and ep in text
        assert isinstance(ei.value, ConnectionError)


async def test_deadline_stops_retrying(fake: tuple[FakeS3, str]) -> None:
    server, ep = fake
    server.script = [("error", 503, "SlowDown", {"Retry-After": "5"})] * 3
    policy = RetryPolicy(max_attempts=10, base_delay=0.0, deadline=1.0, stall_timeout=5.0)
    async with fake_store(ep, retry=policy) as store:
        with pytest.raises(StoreUnavailable, match="SlowDown"):
            await store.put("k", b"v")  # waiting 5 s would pass the 1 s deadline: give up now
        assert store.counters.requests == 1


async def test_a_retry_sends_the_body_source_again(fake: tuple[FakeS3, str]) -> None:
    server, ep = fake
    starts = []

    class Counting:
        size = 3 << 20

        def chunks(self) -> Iterator[bytes]:
            starts.append(threading.current_thread().name)
            for i in range(3):
                yield bytes([65 + i]) * (1 << 20)

    server.script = [("error", 500, "InternalError", {})]
    async with fake_store(ep) as store:
        await store.put("k", Counting())
    assert len(starts) == 2 and all(name != threading.main_thread().name for name in starts)
    expected = b"A" * (1 << 20) + b"B" * (1 << 20) + b"C" * (1 << 20)
    assert server.bodies == [expected, expected]
    assert server.objects["k"][0] == expected


async def test_retried_create_recognises_its_own_earlier_success(fake: tuple[FakeS3, str]) -> None:
    server, ep = fake
    server.script = ["store-then-reset"]  # the write lands, the answer is lost
    async with fake_store(ep) as store:
        info = await store.put("v/7", b"mine", if_none_match=True)
        assert info.etag == hashlib.md5(b"mine").hexdigest()
        assert [r[0] for r in server.requests] == ["PUT", "PUT", "HEAD"]  # 412 on the retry, then a look
        # The same after a lost answer to a compare-and-swap.
        server.script = ["store-then-reset"]
        info2 = await store.put("v/7", b"mine too", if_match=info.etag)
        assert server.objects["v/7"][0] == b"mine too" and info2.size == 8


async def test_retried_create_that_lost_says_the_outcome_is_unknown(fake: tuple[FakeS3, str]) -> None:
    server, ep = fake
    # Our write lands but the answer is lost; another writer replaces it before our retry.
    server.script = ["store-then-reset", ("replace", b"theirs", "someone-else")]
    async with fake_store(ep) as store:
        with pytest.raises(PreconditionFailedAfterRetry, match="earlier attempt") as ei:
            await store.put("v/7", b"mine", if_none_match=True)
        assert isinstance(ei.value, PreconditionFailed)


async def test_server_without_conditional_writes_is_refused(fake: tuple[FakeS3, str]) -> None:
    server, ep = fake
    server.script = [("error", 501, "NotImplemented", {})]
    async with fake_store(ep) as store:
        with pytest.raises(ConditionalWritesUnsupported, match="If-None-Match"):
            await store.put("ref", b"v", if_none_match=True)
        server.ignore_conditions = True  # silently ignores the headers: only the probe can tell
        with pytest.raises(ConditionalWritesUnsupported, match="create-if-absent"):
            await store.check_conditional_writes()


async def test_a_body_corrupted_in_transit_is_refused_by_the_server_and_resent(
    s3_server: S3TestServer, s3_bucket: str
) -> None:
    """Whole-object PUTs carry x-amz-checksum-crc32: a flipped byte on the wire is refused
    (BadDigest) and the write is retried; parts and batch deletes carry Content-MD5."""
    from tests.faultproxy import Corrupt, FaultProxy

    data = os.urandom(3 << 20)
    with FaultProxy(upstream=s3_server.endpoint) as proxy:
        proxy.add_rule(Corrupt(phase="request"), method="PUT", path="/corrupt-me$", times=1)
        async with S3Store(
            s3_bucket,
            endpoint_url=proxy.url,
            access_key_id=s3_server.access_key,
            secret_access_key=s3_server.secret_key,
            retry=FAST,
        ) as store:
            await store.put("corrupt-me", data)
            assert await store.get("corrupt-me") == data
        puts = [r for r in proxy.requests if r.method == "PUT" and r.path.endswith("/corrupt-me")]
    assert [r.status for r in puts] == [400, 200]  # refused once, then stored intact


# ---- direct GETs (s3_direct) ---------------------------------------------------------------


def _gets(server: FakeS3) -> list[int]:
    pairs = zip(server.requests, server.peers, strict=True)
    return [port for (method, _, _), port in pairs if method == "GET"]


async def test_direct_gets_fill_the_callers_buffer_and_reuse_one_connection(fake: tuple[FakeS3, str]) -> None:
    server, ep = fake
    data = os.urandom(300_000)
    server.objects["k"] = (data, hashlib.md5(data).hexdigest(), None)
    async with fake_store(ep) as store:
        assert await store.get("k") == data
        assert await store.get("k", (1000, 250_000)) == data[1000:250_000]
        async with store.open_read("k", (5, 200_005)) as r:
            buf = memoryview(bytearray(65_536))
            got = bytearray()
            while n := await r.readinto(buf):
                got += buf[:n]
        assert got == data[5:200_005]
        async with store.open_read("k") as r:
            assert b"".join([c async for c in r]) == data
        ports = _gets(server)
        assert len(ports) == 4 and len(set(ports)) == 1  # one kept-alive connection
        assert (store.counters.requests, store.counters.retries) == (4, 0)
        assert store._direct is not None


async def test_a_direct_get_answered_otherwise_goes_through_aiohttp(fake: tuple[FakeS3, str]) -> None:
    """A chunked body is not read on the direct connection: the GET is sent again through
    aiohttp (no retry counted: nothing failed). ``Connection: close`` is honoured."""
    server, ep = fake
    data = os.urandom(100_000)
    server.objects["k"] = (data, hashlib.md5(data).hexdigest(), None)
    async with fake_store(ep) as store:
        server.script = ["chunked"]
        assert await store.get("k") == data
        assert len(_gets(server)) == 2 and store.counters.retries == 0
        server.requests.clear()
        server.peers.clear()
        server.script = ["close"]
        assert await store.get("k") == data
        assert await store.get("k") == data
        first, second = _gets(server)
        assert first != second  # the closed connection was not used again


async def test_an_answer_without_content_length_is_an_error_not_an_empty_object(
    fake: tuple[FakeS3, str],
) -> None:
    """A chunked GET answer on the aiohttp path read as b"" (its missing Content-Length taken
    for 0): a silent wrong result. It is refused, naming the cause."""
    server, ep = fake
    data = os.urandom(100_000)
    server.objects["k"] = (data, hashlib.md5(data).hexdigest(), None)
    async with fake_store(ep, direct_reads=False) as store:
        server.script = ["chunked"]
        with pytest.raises(StoreRequestFailed, match="no valid Content-Length"):
            await store.get("k")
        assert await store.get("k") == data  # the next, framed answer is read


async def test_a_retryable_error_on_a_direct_get_is_retried_through_aiohttp(fake: tuple[FakeS3, str]) -> None:
    server, ep = fake
    server.objects["k"] = (b"data", hashlib.md5(b"data").hexdigest(), None)
    server.script = [("error", 503, "SlowDown", {"Retry-After": "0"}), ("error", 500, "InternalError", {})]
    async with fake_store(ep) as store:
        assert await store.get("k") == b"data"
        assert (store.counters.requests, store.counters.retries) == (3, 2)


@pytest.mark.parametrize("how", ["argument", "environment"])
async def test_direct_reads_can_be_turned_off(
    fake: tuple[FakeS3, str], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    server, ep = fake
    server.objects["k"] = (b"data", hashlib.md5(b"data").hexdigest(), None)
    if how == "environment":
        monkeypatch.setenv("SYNCENGINE_S3_DIRECT_READS", "0")
    async with fake_store(ep, **({"direct_reads": False} if how == "argument" else {})) as store:
        assert await store.get("k") == b"data"
        async with store.open_read("k") as r:
            buf = memoryview(bytearray(10))
            assert await r.readinto(buf) == 4 and bytes(buf[:4]) == b"data"
        assert store._direct is None and not store.direct_reads

"""syncengine.store.sigv4, the one SigV4 signer (S3Store and the no-change read path): AWS's
published example, and the same Authorization as botocore's S3 signer for random requests;
and S3Store resolving static credentials without importing botocore."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncengine.store.aws_env import StaticCredentials, env_credentials
from syncengine.store.s3_urls import object_url
from syncengine.store.sigv4 import UNSIGNED_PAYLOAD, sign_v4

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_the_aws_documented_get_object_example() -> None:
    # AWS S3 API reference, "Signature Calculations for the Authorization Header", GET Object
    headers = sign_v4(
        "GET",
        "https://examplebucket.s3.amazonaws.com/test.txt",
        access_key="AKIAIOSFODNN7EXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        region="us-east-1",
        amz_date="20130524T000000Z",
        payload_hash=EMPTY_SHA256,
        headers={"Range": "bytes=0-9"},
    )
    assert headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


def _botocore_sign(
    method: str, url: str, headers: dict[str, str], token: str | None, when: datetime.datetime
) -> dict[str, str]:
    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    class Unsigned(botocore.auth.S3SigV4Auth):  # type: ignore[misc]
        def payload(self, request: Any) -> str:
            return UNSIGNED_PAYLOAD

    saved = botocore.auth.get_current_datetime
    botocore.auth.get_current_datetime = lambda: when.replace(tzinfo=None)
    try:
        req = AWSRequest(method=method, url=url, headers=dict(headers))
        Unsigned(Credentials("AKID", "SECRET/+x", token), "s3", "eu-west-1").add_auth(req)
    finally:
        botocore.auth.get_current_datetime = saved
    return {k.lower(): v for k, v in req.headers.items()}


keys = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40).filter(
    lambda k: not k.startswith("/")
)
query_values = st.one_of(
    st.none(), st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
)
queries = st.lists(
    st.tuples(st.sampled_from(["uploadId", "partNumber", "uploads", "list-type", "prefix", "delimiter",
                               "continuation-token", "max-keys", "delete", "versionId", "start-after"]),
              query_values),
    max_size=4,
    unique_by=lambda kv: kv[0],
)  # fmt: skip
header_values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=24
).filter(lambda v: v.strip() != "")
headers = st.dictionaries(
    st.sampled_from(["Content-Length", "Content-MD5", "x-amz-checksum-crc32", "If-Match", "If-None-Match",
                     "Range", "x-amz-meta-syncengine-write-id", "Content-Type", "User-Agent", "Expect"]),
    header_values,
    max_size=5,
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    method=st.sampled_from(["GET", "HEAD", "PUT", "POST", "DELETE"]),
    key=keys,
    query=queries,
    hdrs=headers,
    token=st.one_of(st.none(), st.text("abcXYZ019+/=", min_size=1, max_size=30)),
    virtual=st.booleans(),
    port=st.sampled_from(["", ":9000", ":443", ":80"]),
)
def test_agrees_with_botocores_signer(
    method: str,
    key: str,
    query: list[tuple[str, str | None]],
    hdrs: dict[str, str],
    token: str | None,
    virtual: bool,
    port: str,
) -> None:
    when = datetime.datetime(2026, 12, 1, 21, 7, 3, tzinfo=datetime.UTC)
    endpoint = f"https://S3.eu-west-1.amazonaws.com{port}" if virtual else f"http://127.0.0.1{port}"
    url = object_url(
        endpoint, "bucket-1", f"pre/{key}", addressing="virtual" if virtual else "path", query=query
    )
    ours = sign_v4(
        method, url, access_key="AKID", secret_key="SECRET/+x", region="eu-west-1",
        amz_date=when.strftime("%Y%m%dT%H%M%SZ"), session_token=token, headers=hdrs,
    )  # fmt: skip
    theirs = _botocore_sign(method, url, hdrs, token, when)
    assert ours["authorization"] == theirs["authorization"]
    assert ours["x-amz-content-sha256"] == UNSIGNED_PAYLOAD == theirs["x-amz-content-sha256"]
    for name, value in hdrs.items():
        assert ours[name.lower()] == value  # sent as given


def test_the_query_order_does_not_change_the_signature() -> None:
    a = object_url("http://h:1", "b", "k", query=[("uploadId", "x"), ("partNumber", "2")])
    b = object_url("http://h:1", "b", "k", query=[("partNumber", "2"), ("uploadId", "x")])
    args: dict[str, Any] = {
        "access_key": "A",
        "secret_key": "S",
        "region": "r",
        "amz_date": "20260101T000000Z",
    }
    assert sign_v4("PUT", a, **args)["authorization"] == sign_v4("PUT", b, **args)["authorization"]


def test_static_credentials_never_show_the_secret() -> None:
    c = StaticCredentials("AKIDSHOWN", "THE-SECRET", "THE-TOKEN")
    assert "THE-SECRET" not in repr(c) and "THE-TOKEN" not in repr(c) and "AKIDSHOWN" in repr(c)
    assert env_credentials(
        {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t"}
    ) == (StaticCredentials("a", "s", "t", "env"))
    expiring = {
        "AWS_ACCESS_KEY_ID": "a",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_CREDENTIAL_EXPIRATION": "2030-01-01",
    }
    assert env_credentials(expiring) is None  # botocore re-reads them (tests/unit/test_aws_env.py)


RESOLVE = """
import asyncio, json, sys
from syncengine.store.s3 import S3Store
s = S3Store("bucket-1", "p", endpoint_url="http://127.0.0.1:9")
r = s._resolve_sync()
print(json.dumps({"region": r.region, "source": r.source, "endpoint": r.endpoint,
                  "botocore": "botocore" in sys.modules}))
"""


def _resolve(env: dict[str, str]) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    out = subprocess.run(
        [sys.executable, "-c", RESOLVE], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    import json

    return dict(json.loads(out.stdout))


def test_s3store_takes_environment_credentials_without_importing_botocore(tmp_path: Path) -> None:
    base = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "S", "AWS_CONFIG_FILE": str(tmp_path / "c"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "creds")}  # fmt: skip
    got = _resolve({**base, "AWS_REGION": "eu-west-1"})
    assert got == {
        "region": "eu-west-1",
        "source": "env",
        "endpoint": "http://127.0.0.1:9",
        "botocore": False,
    }
    # The region from the profile in the config file: read there (aws_env.load_config), the
    # same answer as botocore's (tests/unit/test_aws_env.py).
    (tmp_path / "c").write_text("[default]\nregion = ap-south-1\n[profile team]\nregion = us-west-2\n")
    got = _resolve(base)
    assert got == {
        "region": "ap-south-1",
        "source": "env",
        "endpoint": "http://127.0.0.1:9",
        "botocore": False,
    }
    # Where the chain decides (a profile only the credentials file knows), botocore does.
    (tmp_path / "creds").write_text("[crew]\naws_access_key_id = T\naws_secret_access_key = TS\n")
    got = _resolve({**base, "AWS_PROFILE": "crew", "AWS_REGION": "eu-west-1"})
    assert got["botocore"] is True and got["source"] == "env"
    # A profile of the config file: the environment's keys still come first in the chain.
    got = _resolve({**base, "AWS_PROFILE": "team"})
    assert (got["botocore"], got["source"], got["region"]) == (False, "env", "us-west-2")


@pytest.mark.parametrize("virtual", [False, True])
def test_s3store_signs_like_botocore(virtual: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from syncengine.store import sigv4
    from syncengine.store.s3 import _sign

    when = datetime.datetime(2026, 12, 1, 21, 7, 3, tzinfo=datetime.UTC)
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    monkeypatch.setattr(
        sigv4, "time", types.SimpleNamespace(strftime=lambda fmt, t: stamp, gmtime=lambda: None)
    )
    url = object_url(
        "https://s3.eu-west-1.amazonaws.com", "b", "k", addressing="virtual" if virtual else "path"
    )
    creds = StaticCredentials("AKID", "SECRET/+x", "tok")
    ours = _sign("PUT", url, {"Content-Length": "3"}, creds, "eu-west-1")
    assert (
        ours["authorization"]
        == _botocore_sign("PUT", url, {"Content-Length": "3"}, "tok", when)["authorization"]
    )

"""The SigV4 GET signer of the no-change read path (syncengine.store.s3_quick): AWS's published
example, agreement with botocore's signer (which S3Store uses), and when the path is taken."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncengine.store import s3_quick
from syncengine.store.s3_quick import UNSIGNED_PAYLOAD, quick_reader, sign_v4
from syncengine.store.s3_urls import object_url

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


keys = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40).filter(
    lambda k: not k.startswith("/")
)


@settings(max_examples=60, deadline=None)
@given(
    key=keys,
    token=st.one_of(st.none(), st.text("abcXYZ019+/=", min_size=1, max_size=30)),
    virtual=st.booleans(),
    port=st.sampled_from(["", ":9000"]),
)
def test_agrees_with_botocores_signer(key: str, token: str | None, virtual: bool, port: str) -> None:
    import botocore.auth
    from botocore.credentials import Credentials

    from syncengine.store.s3 import _Signer

    when = datetime.datetime(2026, 12, 1, 21, 7, 3, tzinfo=datetime.UTC)
    endpoint = f"https://s3.eu-west-1.amazonaws.com{port}" if virtual else f"http://127.0.0.1{port}"
    url = object_url(endpoint, "bucket-1", f"pre/{key}", addressing="virtual" if virtual else "path")
    ours = sign_v4(
        "GET", url, access_key="AKID", secret_key="SECRET/+x", region="eu-west-1",
        amz_date=when.strftime("%Y%m%dT%H%M%SZ"), session_token=token,
    )  # fmt: skip
    saved = botocore.auth.get_current_datetime
    botocore.auth.get_current_datetime = lambda: when.replace(tzinfo=None)
    try:
        theirs = _Signer().sign("GET", url, {}, Credentials("AKID", "SECRET/+x", token), "eu-west-1")
    finally:
        botocore.auth.get_current_datetime = saved
    theirs = {k.lower(): v for k, v in theirs.items()}
    assert ours["authorization"] == theirs["authorization"]
    assert ours["x-amz-content-sha256"] == UNSIGNED_PAYLOAD == theirs["x-amz-content-sha256"]


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    import os

    for k in list(os.environ):
        if k.startswith(("AWS_", "SYNCENGINE_S3_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SECRET")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    return monkeypatch


def test_taken_with_environment_credentials_and_region(aws_env: pytest.MonkeyPatch) -> None:
    r = quick_reader("s3://bucket-1/some/prefix/")
    assert r is not None
    assert (r.endpoint, r.bucket, r.prefix, r.region, r.addressing) == (
        "https://s3.eu-west-1.amazonaws.com", "bucket-1", "some/prefix/", "eu-west-1", "virtual",
    )  # fmt: skip
    aws_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")
    r = quick_reader("s3://bucket-1")
    assert r is not None and (r.endpoint, r.prefix, r.addressing) == ("http://127.0.0.1:8333", "", "path")
    r = quick_reader("s3://bucket-1/p", "http://127.0.0.1:9999/")
    assert r is not None and r.endpoint == "http://127.0.0.1:9999"
    aws_env.setenv("SYNCENGINE_S3_ADDRESSING", "virtual")
    r = quick_reader("s3://bucket-1/p")
    assert r is not None and r.addressing == "virtual"


@pytest.mark.parametrize(
    "change",
    [
        {"AWS_SECRET_ACCESS_KEY": None},  # credentials from another provider of the chain
        {"AWS_ACCESS_KEY_ID": None},
        {"AWS_PROFILE": "team"},  # a profile: its settings decide
        {"AWS_REGION": None},  # the region comes from the profile
        {"config": "[default]\ns3 =\n    addressing_style = path\n"},
    ],
    ids=["no-secret", "no-key", "profile", "no-region", "s3-config"],
)
def test_not_taken_where_the_aws_chain_decides(
    aws_env: pytest.MonkeyPatch, tmp_path: Path, change: dict[str, str | None]
) -> None:
    for k, v in change.items():
        if k == "config":
            assert v is not None
            (tmp_path / "config").write_text(v)
        elif v is None:
            aws_env.delenv(k)
        else:
            aws_env.setenv(k, v)
    assert quick_reader("s3://bucket-1/p") is None
    assert quick_reader("/a/local/dir") is None


def test_a_config_file_without_s3_settings_is_fine(aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "config").write_text("[default]\noutput = json\n[profile other]\ns3 =\n  x = y\n")
    assert s3_quick._config_has_s3_settings({"AWS_CONFIG_FILE": str(tmp_path / "config")}) is False
    assert quick_reader("s3://bucket-1/p") is not None

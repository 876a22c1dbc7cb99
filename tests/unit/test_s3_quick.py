"""When the no-change read path (syncengine.store.s3_quick) is taken; its signer,
syncengine.store.sigv4, is tested in test_sigv4.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncengine.store.aws_env import config_has_s3_settings
from syncengine.store.s3_quick import quick_reader


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
        {"AWS_CREDENTIAL_EXPIRATION": "2026-12-02T00:00:00Z"},  # botocore re-reads them
        {"AWS_REGION": None},  # the region comes from the profile
        {"config": "[default]\ns3 =\n    addressing_style = path\n"},
    ],
    ids=["no-secret", "no-key", "profile", "expiring", "no-region", "s3-config"],
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
    assert config_has_s3_settings({"AWS_CONFIG_FILE": str(tmp_path / "config")}) is False
    assert quick_reader("s3://bucket-1/p") is not None


_VARIANTS: list[dict[str, str | None]] = [
    {},
    {"AWS_REGION": None},
    {"AWS_REGION": None, "AWS_DEFAULT_REGION": "ap-south-1"},
    {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000/"},
    {"AWS_ENDPOINT_URL_S3": "https://s3.example.com", "AWS_ENDPOINT_URL": "http://ignored:1"},
    {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"},
    {"AWS_PROFILE": "other"},
    {"AWS_SECRET_ACCESS_KEY": None},
    {"AWS_SESSION_TOKEN": "tok"},
    {"AWS_CREDENTIAL_EXPIRATION": "2030-01-01T00:00:00Z"},
    {"SYNCENGINE_S3_ADDRESSING": "virtual"},
    {"CONFIG": "[default]\ns3 =\n    addressing_style = path\n"},
    {"CONFIG": "[default]\ns3 =\n    addressing_style = path\n", "SYNCENGINE_S3_ADDRESSING": "path"},
]


@pytest.mark.parametrize("variant", _VARIANTS)
def test_taken_exactly_where_s3store_resolves_without_botocore(
    aws_env: pytest.MonkeyPatch, tmp_path: Path, variant: dict[str, str | None]
) -> None:
    """One rule for both (aws_env.static_resolution): the quick path must never read a
    repository that S3Store would resolve to another region, endpoint or credentials."""
    from syncengine.store.s3 import S3Store, choose_addressing

    for k, v in variant.items():
        if k == "CONFIG":
            (tmp_path / "config").write_text(v or "")
        elif v is None:
            aws_env.delenv(k, raising=False)
        else:
            aws_env.setenv(k, v)
    quick = quick_reader("s3://bucket-1/p")
    store = S3Store("bucket-1", "p")
    static = store._resolve_static()
    assert (quick is None) == (static is None)
    if quick is not None and static is not None:
        assert (quick.region, quick.endpoint) == (static.region, static.endpoint)
        assert quick._creds == static.provider
        wanted = store._addressing_arg if store._addressing_arg != "auto" else static.addressing
        assert quick.addressing == choose_addressing(static.endpoint, "bucket-1", wanted)

"""`syncengine init`: creates a local repository (the folder and its config) or an S3 one
(with --create-bucket, the bucket too, in the AWS region), checks one that exists, and
changes nothing when run again; against the real S3 server."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.connectproxy import ConnectProxy
from tests.integration.test_s3_repository import cli, ok, s3_env
from tests.s3server import S3TestServer


def _json(r: object) -> dict[str, object]:
    return dict(json.loads(ok(r)))  # type: ignore[arg-type]


def test_init_creates_a_local_repository_once(tmp_path: Path, s3_server: S3TestServer) -> None:
    env = s3_env(s3_server)
    repo = tmp_path / "new" / "repo"
    first = _json(cli("init", str(repo), "--json", env=env))
    assert first["created"] is True and (repo / "config").is_file()
    again = _json(cli("init", str(repo), "--json", env=env))
    assert again == {**first, "created": False}
    text = ok(cli("init", "--repo", str(repo), env=env))
    assert text.startswith(f"checked repository {repo} (id {first['id']}, format 1")
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a")
    ok(cli("put", "-n", "p/d", "-t", "dataset", str(data), "--repo", str(repo), env=env))

    (tmp_path / "file").write_text("x")
    r = cli("init", str(tmp_path / "file"), env=env)
    assert r.returncode == 2 and "is a file, not a folder" in r.stderr
    r = cli("init", str(repo), "--create-bucket", env=env)
    assert r.returncode == 2 and "s3://" in r.stderr


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_init_creates_a_bucket_only_when_asked_and_is_idempotent(
    tmp_path: Path, s3_server: S3TestServer, region: str
) -> None:
    """A new bucket: the first put (or init) without --create-bucket names the bucket and the
    way to create it; `init --create-bucket` creates bucket and config (a CreateBucket with
    the region's LocationConstraint outside us-east-1), and a second run creates nothing."""
    env = s3_env(s3_server, AWS_REGION=region, AWS_DEFAULT_REGION=region)
    bucket = f"se-init-{uuid.uuid4().hex[:10]}"
    url = f"s3://{bucket}/team/repo"
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a")
    put = ("put", "-n", "p/d", "-t", "dataset", str(data), "--repo", url)
    for args in (put, ("init", url)):
        r = cli(*args, env=env)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert f"bucket '{bucket}' does not exist" in r.stderr and "--create-bucket" in r.stderr, r.stderr

    first = _json(cli("init", url, "--create-bucket", "--json", env=env))
    assert (first["bucket_created"], first["created"], first["bucket"], first["region"]) == (
        True, True, bucket, region,
    )  # fmt: skip
    again = _json(cli("init", url, "--create-bucket", "--json", env=env))
    assert again == {**first, "bucket_created": False, "created": False}
    text = ok(cli("init", url, env=env))
    assert text.startswith(f"checked repository {url} (id {first['id']}")
    ok(cli(*put, env=env))
    other = _json(cli("init", f"s3://{bucket}/another", "--json", env=env))  # same bucket, new prefix
    assert other["created"] is True and other["id"] != first["id"]


def test_create_bucket_sends_the_location_constraint_of_the_region(
    tmp_path: Path, s3_server: S3TestServer
) -> None:
    """The CreateBucket request itself, as the recording proxy forwarded it: outside
    us-east-1 its body names the region (S3 refuses a bodiless one there); in us-east-1 it
    has no body (S3 refuses us-east-1 named)."""
    with ConnectProxy() as proxy:
        for region in ("us-east-1", "eu-west-1"):
            env = s3_env(s3_server, AWS_REGION=region, AWS_DEFAULT_REGION=region, HTTP_PROXY=proxy.url)
            bucket = f"se-init-{uuid.uuid4().hex[:10]}"
            ok(cli("init", f"s3://{bucket}/r", "--create-bucket", env=env))
            bucket_url = f"{s3_server.endpoint}/{bucket}"
            (body,) = [b for m, u, b in proxy.requests if m == "PUT" and u == bucket_url]
            if region == "us-east-1":
                assert body == b""
            else:
                assert b"<LocationConstraint>eu-west-1</LocationConstraint>" in body
                assert b"<CreateBucketConfiguration" in body

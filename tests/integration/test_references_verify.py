"""`verify`, `check` and the file cache with versions that hold references (metadata-only
entries): never reported as missing blobs; `verify --references` re-checks copies and sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.s3server import S3TestServer


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncengine", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_verify_and_check_with_references(s3_server: S3TestServer, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket("refs")
    weights = b"w" * (200 << 10)  # above the file cache's smallest file (64 KiB)
    assert s3_server.request("PUT", f"/{bucket}/w/model.bin", weights)[0] == 200
    env = {
        **os.environ,
        **s3_server.env(),
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "SYNCENGINE_REPO": str(tmp_path / "repo"),
        "SYNCENGINE_CACHE_DIR": str(tmp_path / "cache"),
        "SYNCENGINE_TRUST_REFERENCES": str(tmp_path / "repo"),  # the user's opt-in: docs/REFERENCES.md
    }
    stored = tmp_path / "stored"
    stored.mkdir()
    (stored / "readme.txt").write_bytes(b"r" * (100 << 10))
    src = tmp_path / "nfs"
    src.mkdir()
    (src / "labels.csv").write_bytes(b"a,b\n1,2\n" * 20000)
    (src / "quick.bin").write_bytes(b"q" * 100)
    r = cli(
        env, "put", str(stored), "-n", "p/m", "-t", "model",
        "--reference", f"s3://{bucket}/w/model.bin",
        "--reference", f"labels.csv=file://{src / 'labels.csv'}",
        "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = cli(
        env,
        "put",
        "-n",
        "p/quick",
        "-t",
        "model",
        "--reference",
        f"file://{src / 'quick.bin'}",
        "--no-checksum",
    )
    assert r.returncode == 0, r.stderr

    # check (structure and data): references store no blob, so none is reported missing.
    r = cli(env, "check", "--read-data", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"ok": True, "problems": []}, r.stdout + r.stderr

    out = tmp_path / "out"
    r = cli(env, "get", "p/m", "--root", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "model.bin").read_bytes() == weights
    for extra in ((), ("--references",)):
        r = cli(env, "verify", "p/m", "--root", str(out), *extra)
        assert r.returncode == 0 and r.stdout.strip() == f"{out} matches p/m", r.stdout + r.stderr

    # The file cache holds the stored file only: a reference's ETag is no content address,
    # so its bytes are never cached (nor served from the cache after the source changes).
    info = json.loads(cli(env, "cache", "info", "--json").stdout)
    assert info["files"] == 1 and info["bytes"] == 100 << 10

    # Copies on disk: the plain verify skips references; --references holds them to the log.
    (out / "model.bin").unlink()
    (out / "labels.csv").write_bytes(b"a,b\n1,3\n" * 20000)  # same size, other content
    assert cli(env, "verify", "p/m", "--root", str(out)).returncode == 0
    r = cli(env, "verify", "p/m", "--root", str(out), "--references")
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        "changed: labels.csv (reference copy: content differs from the logged digest)",
        "missing: model.bin (reference not on disk)",
    ]

    # Sources: the S3 object and the file changed since logging.
    assert s3_server.request("PUT", f"/{bucket}/w/model.bin", b"weights v2")[0] == 200
    (src / "labels.csv").write_bytes(b"a,b\n9,9\n" * 20000)
    r = cli(env, "get", "p/m", "--root", str(out))  # a download refuses it, as before
    assert r.returncode == 1 and "changed since it was logged" in r.stderr
    r = cli(env, "verify", "p/m", "--root", str(tmp_path / "empty-but-real"), "--references", "--json")
    assert r.returncode == 1, r.stderr
    diffs = {d["path"]: (d["kind"], d["detail"]) for d in json.loads(r.stdout)["differences"]}
    assert diffs["readme.txt"] == ("missing", "not on disk")
    kind, detail = diffs["model.bin"]
    assert kind == "changed" and detail.startswith(
        f"source: reference 'model.bin' (s3://{bucket}/w/model.bin) changed since it was logged: ETag "
    )
    assert diffs["labels.csv"][1].startswith("source: reference 'labels.csv' (file://")
    assert "content digest differs from the logged one" in diffs["labels.csv"][1]

    # A reference logged without checksum: size and mtime are what the source is held to.
    qout = tmp_path / "qout"
    assert cli(env, "get", "p/quick", "--root", str(qout)).returncode == 0
    assert cli(env, "verify", "p/quick", "--root", str(qout), "--references").returncode == 0
    os.utime(src / "quick.bin", ns=(1, 1))
    r = cli(env, "verify", "p/quick", "--root", str(qout), "--references")
    assert r.returncode == 1 and "mtime_ns 1, logged " in r.stdout


def test_verify_references_follows_a_source_that_is_a_link_as_logging_did(tmp_path: Path) -> None:
    """A checksummed file:// reference whose source path is a symlink was logged through the
    link; `verify --references` judged the link itself and said the content differs."""
    env = {
        **os.environ,
        "SYNCENGINE_REPO": str(tmp_path / "repo"),
        "SYNCENGINE_CACHE_DIR": str(tmp_path / "cache"),
        "SYNCENGINE_TRUST_REFERENCES": str(tmp_path / "repo"),
    }
    data = tmp_path / "data"
    data.mkdir()
    (data / "real.csv").write_bytes(b"x,y\n" * 1000)
    (data / "link.csv").symlink_to("real.csv")
    r = cli(env, "put", "-n", "p/r", "-t", "dataset", "--reference", f"file://{data / 'link.csv'}")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    assert cli(env, "get", "p/r", "--root", str(out)).returncode == 0
    r = cli(env, "verify", "p/r", "--root", str(out), "--references")
    assert r.returncode == 0 and r.stdout.strip() == f"{out} matches p/r", r.stdout + r.stderr

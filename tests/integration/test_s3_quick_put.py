"""A no-change `syncengine put` to s3:// with credentials from the environment is answered
through syncengine.store.s3_quick: neither aiohttp nor botocore is imported, and the report is
the full path's. A wrong secret there falls back to the full path, which reports it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.test_cli_startup import _RUN_AND_LIST_MODULES
from tests.integration.test_s3_repository import REPO_ROOT, cli, ok_json, s3_env
from tests.s3server import S3TestServer


def test_no_change_put_on_s3_skips_aiohttp_and_botocore(
    tmp_path: Path, s3_server: S3TestServer, s3_bucket: str
) -> None:
    data = tmp_path / "data"
    for i in range(40):
        p = data / f"d{i % 3}" / f"f{i:02d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(bytes([i]) * (100 + i))
    time.sleep(2.2)  # the memo trusts only files older than 2 s when they were hashed
    env = s3_env(s3_server)
    args = ["put", "-n", "proj/data", "-t", "dataset", str(data), "--repo", f"s3://{s3_bucket}/r", "--json"]
    first = ok_json(cli(*args, env=env))
    assert first["created_now"] is True

    listed = tmp_path / "modules.txt"
    again = subprocess.run(
        [sys.executable, "-c", _RUN_AND_LIST_MODULES, str(listed), *args],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    same = json.loads(again.stdout)
    expected = {**first, "created_now": False, "new_blobs": 0, "new_bytes": 0, "packs": 0}
    assert {**same, "seconds": 0} == {**expected, "seconds": 0}
    loaded = set(listed.read_text().split())
    assert "syncengine.store.s3_quick" in loaded and "syncengine.repo.put_memo" in loaded
    assert not any(m.split(".")[0] in ("aiohttp", "botocore", "asyncio") for m in loaded)

    # an alias to move needs a write: the full path, same command line otherwise
    moved = ok_json(cli(*args, "-a", "best", env=env))
    assert (moved["ref"], moved["created_now"]) == ("proj/data:v0", False)

    # a wrong secret: the quick read fails, the full path reports the real error once
    bad = cli(*args, env={**env, "AWS_SECRET_ACCESS_KEY": "wrong-secret-value"})
    assert bad.returncode != 0
    assert "Traceback" not in bad.stderr and "wrong-secret-value" not in bad.stderr + bad.stdout
    assert "denied" in bad.stderr.lower() or "signature" in bad.stderr.lower(), bad.stderr

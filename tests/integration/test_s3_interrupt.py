"""Ctrl-C on an S3 repository: `put` and `get` stop promptly (even with requests stuck in
the network), say how to continue, leave nothing half-committed, and the same command run
again completes — a put without re-sending the packs already stored, a get without
re-fetching the files already written."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import blake3

from tests.children import default_sigint
from tests.faultproxy import Delay, FaultProxy
from tests.integration.test_s3_repository import (
    REPO_ROOT,
    MiB,
    cli,
    completed_packs,
    journaled_packs,
    make_large_corpus,
    ok,
    ok_json,
    s3_env,
    stored_packs,
)
from tests.s3server import S3TestServer

INTERRUPTED = "interrupted: nothing half-written was committed; run the same command again"


def interrupt(child: subprocess.Popen[bytes], within: float = 60) -> tuple[str, float]:
    """SIGINT (what Ctrl-C sends), then the child's stderr and how long it took to exit."""
    t0 = time.monotonic()
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=within)
    return err.decode(), time.monotonic() - t0


def test_ctrl_c_during_an_s3_put_then_the_rerun_sends_only_the_rest(
    tmp_path: Path, s3_server: S3TestServer, s3_bucket: str
) -> None:
    size = 160 * MiB
    data = tmp_path / "data"
    make_large_corpus(data, size)
    state_dir = Path(os.environ["SYNCENGINE_STATE_DIR"])
    repo = f"s3://{s3_bucket}/cc"
    data_prefix = f"/{s3_bucket}/cc/data/"
    env = s3_env(s3_server)
    with FaultProxy(s3_server.endpoint) as proxy:
        args = ["put", str(data), "-n", "p/cc", "-t", "model", "--repo", repo, "--endpoint-url", proxy.url]
        child = subprocess.Popen(
            [sys.executable, "-m", "syncengine", *args, "--json"],
            env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=default_sigint,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        hold = None
        while True:
            assert child.poll() is None, f"the put ended before the interrupt: {child.communicate()}"
            if hold is None and len(journaled_packs(state_dir)) >= 2:
                hold = proxy.add_rule(Delay(600.0), path=r"/data/")  # the network stops moving
            if hold is not None and any(r.fault is not None and r.status is None for r in proxy.requests):
                break
            assert time.monotonic() < deadline, f"no progress: {proxy.stats}"
            time.sleep(0.01)
        err, took = interrupt(child)
        assert child.returncode == 130, err
        assert INTERRUPTED in err and "Traceback" not in err
        assert took < 30  # the held requests were abandoned, not waited out (600 s)
        journaled = journaled_packs(state_dir)
        stored = asyncio.run(stored_packs(s3_server, s3_bucket, "cc"))
        answered = completed_packs(proxy.requests, data_prefix)
        print(f"\nstored {len(stored)}, journaled {len(journaled)}, answered to the client {len(answered)}")
        # packs are journaled before they are sent: every stored pack is in the journal (so
        # the re-run adopts it), and so are the abandoned ones (the re-run finds them missing)
        assert answered <= set(stored) <= journaled
        assert not any("/versions/" in r.path and r.method == "PUT" for r in proxy.requests)

        proxy.remove_rule(hold)
        proxy.reset_stats()
        rerun = ok_json(cli(*args, "--json", env=env, timeout=600))
        rerun_puts = {r.path.rsplit("/", 1)[1] for r in proxy.requests if r.method == "PUT"}
    assert (rerun["version"], rerun["created_now"], rerun["size"]) == (0, True, size)
    assert not rerun_puts & set(stored)  # the packs stored before Ctrl-C were adopted
    assert ok_json(cli("check", "--read-data", "--json", "--repo", repo, env=env, timeout=600)) == {
        "ok": True,
        "problems": [],
    }


def test_ctrl_c_during_an_s3_get_keeps_verified_files_and_the_rerun_completes(
    tmp_path: Path, s3_server: S3TestServer, s3_bucket: str
) -> None:
    data = tmp_path / "data"
    digests = make_large_corpus(data, 96 * MiB, file_size=8 * MiB)
    repo = f"s3://{s3_bucket}/gc"
    env = s3_env(s3_server, SYNCENGINE_FILE_CACHE_SIZE="0")
    ok(cli("put", str(data), "-n", "p/gc", "-t", "model", "--repo", repo, env=env))
    out = tmp_path / "out"
    with FaultProxy(s3_server.endpoint) as proxy:
        args = ["get", "p/gc:v0", "--root", str(out), "--repo", repo, "--endpoint-url", proxy.url]
        # the first pack reads pass, then the network stops moving
        hold = proxy.add_rule(Delay(600.0), method="GET", path=r"/data/", nth=range(3, 10_000))
        child = subprocess.Popen(
            [sys.executable, "-m", "syncengine", *args, "--json"],
            env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=default_sigint,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while not any(r.fault is not None and r.status is None for r in proxy.requests):
            assert child.poll() is None, f"the get ended before the interrupt: {child.communicate()}"
            assert time.monotonic() < deadline, f"no progress: {proxy.stats}"
            time.sleep(0.01)
        time.sleep(0.5)  # let the answered reads be written
        err, took = interrupt(child)
        assert child.returncode == 130, err
        assert INTERRUPTED in err and "Traceback" not in err
        assert took < 30
        # every file under its final name is complete and right; what was partly written of a
        # large file stays as a `.se-tmp-partial-*` file, for the re-run to take over
        files = [p for p in out.rglob("*") if p.is_file()]
        kept = {
            p.name: blake3.blake3(p.read_bytes()).hexdigest()
            for p in files
            if not p.name.startswith(".se-tmp")
        }
        assert all(digests.get(name) == d for name, d in kept.items()), sorted(kept)
        assert all(p.name.startswith(".se-tmp-partial-") for p in files if p.name not in kept)
        proxy.remove_rule(hold)
        proxy.reset_stats()
        ok(cli(*args, env=env, timeout=600))
        refetched = proxy.stats.bytes_down
    got = {p.name: blake3.blake3(p.read_bytes()).hexdigest() for p in out.iterdir()}
    assert got == digests  # and no temp file is left
    assert refetched <= 96 * MiB - sum(8 * MiB for _ in kept) + 2 * MiB

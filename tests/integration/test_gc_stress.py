"""Writers in separate processes (each its own Repository) log shared content and delete
versions while two `gc` loops mark, sweep and repack with a grace period of seconds; then
every committed version nobody deleted downloads byte-identical and `syncengine check
--read-data` is clean (docs/GC.md §4a). LocalStore, and a smaller run on SeaweedFS."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

from syncengine.repo.gc_sweep import GcRun, collect
from syncengine.repo.repository import Repository
from syncengine.store import open_store
from tests.integration.gc_stress_child import PARAMS, pool, unique
from tests.integration.test_cli import cli
from tests.integration.test_s3_repository import REPO_ROOT, s3_env
from tests.s3server import S3TestServer

GRACE = 2.0


@pytest.fixture(autouse=True)
def _short_times(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SYNCENGINE_GC_MIN_GRACE", str(GRACE))
    monkeypatch.setenv("SYNCENGINE_GC_SWEEP_TIMEOUT", "3")  # two gc loops: takeovers can happen
    monkeypatch.setenv("SYNCENGINE_CACHE_DIR", str(tmp_path / "cache"))


async def _writer(
    url: str, w: int, iterations: int, tmp: Path, env: dict[str, str]
) -> list[dict[str, object]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.gc_stress_child",
        url,
        str(w),
        str(iterations),
        str(tmp / "work"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
        env={
            **os.environ,
            **env,  # each process is a machine: its own caches and state
            "SYNCENGINE_CACHE_DIR": str(tmp / f"cache-{w}"),
            "SYNCENGINE_STATE_DIR": str(tmp / f"state-{w}"),
        },
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=600)
    assert proc.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()]


async def _stress(url: str, tmp: Path, writers: int, sweeps: int, env: dict[str, str]) -> None:
    iterations = 1000  # at most; the writers stop once `sweeps` sweeps that deleted data ran
    endpoint = env.get("AWS_ENDPOINT_URL")
    async with open_store(url, endpoint_url=endpoint) as store:
        await Repository.open(store, params=PARAMS)  # created once, before the writers race
    stop = asyncio.Event()
    runs: list[GcRun] = []
    (tmp / "work").mkdir()

    async def gc_loop() -> None:
        async with open_store(url, endpoint_url=endpoint) as store:
            repo = await Repository.open(store, params=PARAMS)
            while not stop.is_set():
                runs.append(await collect(repo, grace=GRACE))
                if len([r for r in runs if r.phase == "swept" and r.deleted]) >= sweeps:
                    (tmp / "work" / "stop").touch()  # enough sweeps raced the writers
                await asyncio.sleep(0.1)

    loops = [asyncio.create_task(gc_loop()) for _ in range(2)]
    try:
        logs = await asyncio.gather(*(_writer(url, w, iterations, tmp, env) for w in range(writers)))
    finally:
        stop.set()
        await asyncio.gather(*loops)
    lines = [line for log in logs for line in log]
    committed = {(str(x["committed"]), int(str(x["version"]))): x for x in lines if "committed" in x}
    deleted = {(str(x["deleted"]), int(str(x["version"]))) for x in lines if "deleted" in x}
    live = {k: v for k, v in committed.items() if k not in deleted}
    phases = Counter(r.phase for r in runs)
    assert live and deleted, (phases, len(live), len(deleted))
    # The race was real: sweeps deleted data while the writers ran (they stopped for that).
    assert (tmp / "work" / "stop").exists(), f"writers ended before {sweeps} sweeps: {phases}"

    contents = pool()
    async with open_store(url, endpoint_url=endpoint) as store:
        repo = await Repository.open(store, params=PARAMS)
        for _ in range(3):  # collect what the last deletions left, with no writer running
            while (run := await collect(repo, grace=GRACE)).phase == "waiting":
                await asyncio.sleep(min(run.wait_seconds, 0.5) + 0.05)
        for (name, v), line in sorted(live.items()):
            record = await repo.version("p", name, v)
            out = tmp / f"out-{name}-{v}"
            await repo.download(record, str(out), skip_cache=True)
            got = {p.name: p.read_bytes() for p in out.iterdir()}
            files, own = line["files"], line.get("unique")
            assert isinstance(files, dict)
            want = {path: contents[int(j)] for path, j in files.items()}
            if isinstance(own, list):
                want["u.bin"] = unique(int(own[0]), int(own[1]))
            assert got == want, (name, v)
        names = {n async for n in repo.artifacts("p")}
        for name in names:  # nothing else is live: what writers deleted stays deleted
            assert {(name, r.version) for r in await repo.versions("p", name)} <= set(live)
    r = cli("check", "--read-data", "--repo", url, env=env)
    assert r.returncode == 0, r.stdout + r.stderr


def test_writer_processes_and_gc_loops_on_a_local_store(tmp_path: Path) -> None:
    asyncio.run(_stress(str(tmp_path / "repo"), tmp_path, writers=3, sweeps=3, env={}))


def test_writer_processes_and_gc_loops_on_s3(tmp_path: Path, s3_server: S3TestServer, s3_bucket: str) -> None:
    env = s3_env(s3_server)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the gc loops and checks of this process use them too
    try:
        asyncio.run(_stress(f"s3://{s3_bucket}/stress", tmp_path, writers=2, sweeps=2, env=env))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

"""A `gc` that stops mid-sweep (an exception injected before each step, standing in for a
killed process): no live blob is ever missing, and a later `gc` takes the sweep over once its
intent is older than the sweep timeout and finishes it (docs/GC.md §4a, "Sweep owners")."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from syncengine.hashing.params import ChunkerParams
from syncengine.hashing.tree import Source
from syncengine.repo import gc_objects as g
from syncengine.repo import gc_repack, gc_sweep
from syncengine.repo.gc import survey
from syncengine.repo.gc_sweep import SweepTakenOver, collect
from syncengine.repo.lifecycle import delete_version
from syncengine.repo.repository import Repository
from syncengine.store.base import ObjectStore
from syncengine.store.local import LocalStore
from tests.s3server import S3TestServer

PARAMS = ChunkerParams(4096, 16384, 65536)
GRACE = 1.0
#: The sweep's renewals in an uninterrupted run of the scenario below: before deleting the old
#: segments, the packs, the manifest objects, before the epoch, the done record, the mark,
#: and the final one that marks the intent finished.
RENEWALS = 7


class Crash(Exception):
    """Stands in for the process dying at this point."""


@pytest.fixture(autouse=True)
def _short_times(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SYNCENGINE_GC_MIN_GRACE", str(GRACE))
    monkeypatch.setenv("SYNCENGINE_GC_SWEEP_TIMEOUT", "1")
    monkeypatch.setenv("SYNCENGINE_CACHE_DIR", str(tmp_path / "cache"))


async def _log(repo: Repository, src: Path) -> int:
    r = await repo.log([Source(str(src))], project="p", name="m", type="model", stat_cache=False)
    return r.record.version


async def _scenario(repo: Repository, src: Path) -> tuple[int, dict[str, bytes]]:
    """A pack to repack (v0's big file dead, its small one live in v1), a dead pack (v2's
    own file, v2 deleted) and dead manifest objects; v1 is the live version."""
    small = os.urandom(10_000)
    (src / "small.bin").write_bytes(small)
    (src / "big.bin").write_bytes(os.urandom(60_000))
    await _log(repo, src)
    (src / "big.bin").unlink()
    v1 = await _log(repo, src)
    (src / "other.bin").write_bytes(os.urandom(30_000))
    v2 = await _log(repo, src)
    (src / "other.bin").unlink()
    await delete_version(repo, "p", "m", 0)
    await delete_version(repo, "p", "m", v2)
    return v1, {"small.bin": small}


async def _live_version_intact(repo: Repository, tmp: Path, v: int, files: dict[str, bytes]) -> None:
    fresh = await Repository.open(repo.store, params=PARAMS)
    out = tmp / f"out-{os.urandom(4).hex()}"
    await fresh.download(await fresh.version("p", "m", v), str(out), skip_cache=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    assert await fresh.check(read_data=True) == []


async def _wait_for_mark(repo: Repository) -> None:
    while True:  # until the mark's grace period has passed: the next run sweeps
        (mark,) = [i async for i in repo.store.list(g.MARKS)]
        if await gc_sweep.store_now(repo.store) - mark.mtime >= GRACE:
            return
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("crash_at", [*range(1, RENEWALS + 1), "repack-segment"])
def test_a_sweep_stopped_at_any_step_is_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: int | str
) -> None:
    asyncio.run(_stop_and_take_over(LocalStore(tmp_path / "repo"), tmp_path, monkeypatch, crash_at))


def test_a_sweep_stopped_on_s3_is_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_server: S3TestServer, s3_bucket: str
) -> None:
    """The intent's create-if-absent, renewals and takeover as compare-and-swap on S3."""
    from syncengine.store.s3 import S3Store

    async def main() -> None:
        async with S3Store(
            s3_bucket,
            "takeover",
            endpoint_url=s3_server.endpoint,
            region=s3_server.region,
            access_key_id=s3_server.access_key,
            secret_access_key=s3_server.secret_key,
        ) as store:
            await _stop_and_take_over(store, tmp_path, monkeypatch, 2)

    asyncio.run(main())


async def _stop_and_take_over(
    store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: int | str
) -> None:
    repo = await Repository.open(store, params=PARAMS)
    src = tmp_path / "src"
    src.mkdir()
    v, files = await _scenario(repo, src)
    assert (await collect(repo, grace=GRACE)).phase == "marked"
    await _wait_for_mark(repo)

    with monkeypatch.context() as m:

        async def no_heartbeat(self: gc_sweep._Claim) -> None:
            """Renewals are counted below: only those before the sweep's steps."""

        m.setattr(gc_sweep._Claim, "heartbeat", no_heartbeat)
        if crash_at == "repack-segment":  # the new packs are written, their segment not yet

            def no_segment(*args: object) -> object:
                raise Crash

            m.setattr(gc_repack, "encode_index", no_segment)
        else:
            real = gc_sweep._Claim.renew
            calls = 0

            async def renew(self: gc_sweep._Claim, *, finished: bool = False) -> None:
                nonlocal calls
                calls += 1
                if calls == crash_at:
                    raise Crash
                await real(self, finished=finished)

            m.setattr(gc_sweep._Claim, "renew", renew)
        with pytest.raises(Crash):
            await collect(repo, grace=GRACE)
    await _live_version_intact(repo, tmp_path, v, files)
    marks = [i async for i in store.list(g.MARKS)]
    done = [i async for i in store.list(g.DONE)]
    if crash_at == RENEWALS:  # the last step: only marking the intent finished is left
        assert not marks and done
        (intent,) = [i async for i in store.list(g.SWEEPS)]
        assert not g.decode(await store.get(intent.key), g.Sweep).finished
    elif crash_at == RENEWALS - 1:  # before deleting the mark, after the done record
        assert marks and done
    else:
        assert marks and not done

    # Within the sweep timeout the intent belongs to the stopped sweeper: others wait.
    waited = await collect(repo, grace=GRACE)
    took_over = waited.took_over
    if crash_at != RENEWALS:  # its mark still exists
        assert (waited.phase, waited.waiting_for) == ("waiting", "sweeper") or took_over
    for _ in range(100):  # bounded: without a takeover the intent blocks the mark forever
        run = await collect(repo, grace=GRACE)
        took_over |= run.took_over
        if run.phase in ("swept", "nothing") and not [i async for i in store.list(g.MARKS)]:
            break
        await asyncio.sleep(0.2)
    else:
        pytest.fail("the stopped sweep was never taken over")
    assert took_over or crash_at == RENEWALS  # after the last renewal only the intent is left
    await _live_version_intact(repo, tmp_path, v, files)
    report = await survey(repo)
    assert report.reclaimable_bytes == 0 and report.repack == []
    assert len([k async for k in store.list("data/")]) == 1
    # The stopped sweep's records are pruned like any other once no one can need them.
    for _ in range(100):
        if not [i async for i in store.list(g.SWEEPS)] and not [i async for i in store.list(g.DONE)]:
            break
        await asyncio.sleep(0.3)
        await collect(repo, grace=GRACE)
    assert [i.key async for i in store.list("gc/")] == [g.EPOCH]


def test_a_sweeper_taken_over_cannot_delete(tmp_path: Path) -> None:
    """A sweeper that stalled past the timeout loses its intent: its next renewal, which
    comes before every deletion, fails."""

    async def main() -> None:
        store = LocalStore(tmp_path / "repo")
        first, _ = await gc_sweep._claim(store, "ab" * 16)
        assert first is not None
        none, wait = await gc_sweep._claim(store, "ab" * 16)
        assert none is None and 0 < wait <= 1
        while True:
            second, wait = await gc_sweep._claim(store, "ab" * 16)
            if second is not None:
                break
            await asyncio.sleep(wait + 0.05)
        assert second.took_over
        with pytest.raises(SweepTakenOver):
            await first.delete(["data/ab/whatever"])
        await second.renew()

    asyncio.run(main())


def test_a_sweep_slower_than_the_timeout_keeps_its_intent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heartbeat renews the intent while the sweep surveys: another gc trying for twice
    the timeout never takes it over, and the slow sweep then finishes."""
    from syncengine.repo import gc as gc_module

    monkeypatch.setenv("SYNCENGINE_GC_SWEEP_TIMEOUT", "2")  # renewed every 0.5 s: 1.5 s of slack

    async def main() -> None:
        store = LocalStore(tmp_path / "repo")
        repo = await Repository.open(store, params=PARAMS)
        src = tmp_path / "src"
        src.mkdir()
        v, files = await _scenario(repo, src)
        assert (await collect(repo, grace=GRACE)).phase == "marked"
        await _wait_for_mark(repo)
        surveying, release = asyncio.Event(), asyncio.Event()
        real = gc_module.survey

        async def slow_survey(*args: object, **kwargs: object) -> object:
            surveying.set()
            await release.wait()
            return await real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(gc_module, "survey", slow_survey)
        sweeper = asyncio.create_task(collect(repo, grace=GRACE))
        await surveying.wait()
        other = await Repository.open(LocalStore(tmp_path / "repo"), params=PARAMS)
        start = await gc_sweep.store_now(store)
        while await gc_sweep.store_now(store) - start < 4.0:  # twice the sweep timeout
            (mid,) = [i.key.rsplit("/", 1)[1] async for i in store.list(g.MARKS)]
            claim, _ = await gc_sweep._claim(other.store, mid)
            assert claim is None
            await asyncio.sleep(0.2)
        release.set()
        run = await sweeper
        assert run.phase == "swept" and not run.took_over and run.deleted
        await _live_version_intact(repo, tmp_path, v, files)

    asyncio.run(main())


@pytest.mark.parametrize("kill_after", [1, 2, 4])
def test_a_killed_sweeper_process_is_taken_over(tmp_path: Path, kill_after: int) -> None:
    """A real SIGKILL of a `gc` child process right after its n-th renewal (somewhere in the
    deletions that follow): every live blob stays readable, a later `gc` finishes the sweep."""
    import subprocess
    import sys

    from tests.integration.test_s3_repository import REPO_ROOT

    async def setup() -> tuple[int, dict[str, bytes]]:
        repo = await Repository.open(LocalStore(tmp_path / "repo"), params=PARAMS)
        src = tmp_path / "src"
        src.mkdir()
        got = await _scenario(repo, src)
        assert (await collect(repo, grace=GRACE)).phase == "marked"
        await _wait_for_mark(repo)
        return got

    v, files = asyncio.run(setup())
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.gc_kill_child", str(tmp_path / "repo"), str(GRACE)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    assert child.stdout is not None
    for line in child.stdout:
        if line.strip() == f"renewed {kill_after}":
            child.kill()
            break
    child.wait(timeout=60)
    assert child.returncode == -9  # killed before it printed its phase

    async def after() -> None:
        store = LocalStore(tmp_path / "repo")
        repo = await Repository.open(store, params=PARAMS)
        await _live_version_intact(repo, tmp_path, v, files)
        for _ in range(100):
            run = await collect(repo, grace=GRACE)
            if run.phase == "swept":
                break
            await asyncio.sleep(0.2)
        else:
            pytest.fail("the killed sweep was never taken over")
        assert run.took_over
        await _live_version_intact(repo, tmp_path, v, files)
        assert (await survey(repo)).reclaimable_bytes == 0

    asyncio.run(after())

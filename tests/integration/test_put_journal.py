"""A put killed after some packs were uploaded: the next put sends only the rest."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import msgspec
import pytest

from syncengine.hashing.params import ChunkerParams
from syncengine.hashing.tree import Source
from syncengine.repo import repository as repo_mod
from syncengine.repo.pack import parse_pack
from syncengine.repo.put_journal import PutJournal
from syncengine.repo.repository import Repository
from syncengine.store.base import Body, ObjectInfo
from syncengine.store.local import LocalStore

PARAMS = ChunkerParams(64 << 10, 256 << 10, 1 << 20)


class Crash(Exception):
    pass


class RecordingStore(LocalStore):
    """A real LocalStore that records pack uploads and can fail every put after the first N."""

    def __init__(self, root: Path, fail_after: int | None = None) -> None:
        super().__init__(root)
        self.fail_after = fail_after
        self.packs: list[str] = []

    async def put(
        self, key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        if key.startswith("data/"):
            if self.fail_after is not None and len(self.packs) >= self.fail_after:
                raise Crash(key)
            self.packs.append(key)
        return await super().put(key, body, if_none_match=if_none_match, if_match=if_match)


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """1 MiB packs from 1 MiB read batches: a dozen packs from 8 MB."""
    monkeypatch.setattr(repo_mod, "READ_BATCH", 1 << 20)


def make_data(root: Path) -> int:
    total = 0
    for i in range(12):
        data = os.urandom(700_000)
        (root / f"f{i:02d}.bin").parent.mkdir(parents=True, exist_ok=True)
        (root / f"f{i:02d}.bin").write_bytes(data)
        total += len(data)
    return total


async def blobs_of(store: LocalStore, keys: list[str]) -> set[bytes]:
    """The blobs the packs under ``keys`` hold (from their trailers). Which blobs share a
    pack depends on which hashing thread read them, so tests compare blobs, not pack ids."""
    out: set[bytes] = set()
    for key in keys:
        pid = bytes.fromhex(key.rsplit("/", 1)[1])
        out |= {loc.digest for loc in parse_pack(pid, await store.get(key))}
    return out


async def open_repo(store: LocalStore) -> Repository:
    repo = await Repository.open(store, params=PARAMS)
    repo.config = msgspec.structs.replace(repo.config, pack_target=1 << 20)
    return repo


def test_rerun_after_a_crash_sends_only_the_missing_packs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_data(data)

    async def go() -> None:
        crashed = RecordingStore(tmp_path / "repo", fail_after=4)
        repo = await open_repo(crashed)
        with pytest.raises(Crash):
            await repo.log([Source(str(data))], project="p", name="d", type="dataset")
        sent_before = set(crashed.packs)
        assert len(sent_before) == 4
        blobs_before = await blobs_of(crashed, crashed.packs)
        assert [k async for k in crashed.list("index/")] == []  # never indexed: the crash came first
        journal = PutJournal(repo.config.id)
        # every pack is journaled before it is sent: the 4 stored and those that failed
        pending = {pack.hex() for pack, _ in journal.pending()}
        assert {k.rsplit("/", 1)[1] for k in sent_before} < pending
        journal.close()

        rerun = RecordingStore(tmp_path / "repo")
        repo2 = await open_repo(rerun)
        r = await repo2.log([Source(str(data))], project="p", name="d", type="dataset")
        assert r.created and r.record.version == 0
        blobs_rerun = await blobs_of(rerun, rerun.packs)
        assert not blobs_before & blobs_rerun  # the blobs of packs that made it are not sent again
        clean = RecordingStore(tmp_path / "clean")
        repo3 = await open_repo(clean)
        await repo3.log([Source(str(data))], project="p", name="d", type="dataset")
        assert blobs_before | blobs_rerun == await blobs_of(clean, clean.packs)
        assert await repo2.check(read_data=True) == []
        out = tmp_path / "out"
        await repo2.download(r.record, str(out))
        for f in data.iterdir():
            assert (out / f.name).read_bytes() == f.read_bytes()
        journal = PutJournal(repo2.config.id)
        assert journal.pending() == []  # forgotten once indexed
        journal.close()

    asyncio.run(go())


def test_a_journaled_pack_that_vanished_is_sent_again(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_data(data)

    async def go() -> None:
        crashed = RecordingStore(tmp_path / "repo", fail_after=3)
        repo = await open_repo(crashed)
        with pytest.raises(Crash):
            await repo.log([Source(str(data))], project="p", name="d", type="dataset")
        gone = crashed.packs[0]
        gone_blobs = await blobs_of(crashed, [gone])
        kept_blobs = await blobs_of(crashed, crashed.packs[1:])
        await crashed.delete([gone])
        rerun = RecordingStore(tmp_path / "repo")
        repo2 = await open_repo(rerun)
        await repo2.log([Source(str(data))], project="p", name="d", type="dataset")
        sent_again = await blobs_of(rerun, rerun.packs)
        assert gone_blobs <= sent_again  # the vanished pack's blobs are sent again
        assert kept_blobs.isdisjoint(sent_again)  # the others are not
        assert await repo2.check(read_data=True) == []

    asyncio.run(go())


class FailOnceStore(LocalStore):
    """The first pack write fails at once (a full disk); the others succeed, slowly."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls = 0

    async def put(
        self, key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        if key.startswith("data/"):
            self.calls += 1
            if self.calls == 1:
                raise OSError(28, "No space left on device")
            await asyncio.sleep(0.05)
        return await super().put(key, body, if_none_match=if_none_match, if_match=if_match)


def test_a_failed_pack_write_fails_the_put_whenever_it_happens(tmp_path: Path) -> None:
    """An upload that fails early (while others still run) must fail the put: never a
    version that names a pack that was not written."""
    data = tmp_path / "data"
    make_data(data)

    async def go() -> None:
        store = FailOnceStore(tmp_path / "repo")
        repo = await open_repo(store)
        with pytest.raises(OSError, match="No space left"):
            await repo.log([Source(str(data))], project="p", name="d", type="dataset")
        assert [k async for k in store.list("artifacts/")] == []
        assert await repo.check(read_data=True) == []
        again = await repo.log([Source(str(data))], project="p", name="d", type="dataset")
        assert again.created and await repo.check(read_data=True) == []

    asyncio.run(go())


def test_packs_stay_near_the_target_size(tmp_path: Path) -> None:
    """Leftover chunks of one file plus a full batch of the next never make a double-size pack."""
    data = tmp_path / "data"
    data.mkdir()
    for i, size in enumerate([3_300_000, 3_300_000, 1_700_000, 2_600_000]):
        (data / f"f{i}.bin").write_bytes(os.urandom(size))

    async def go() -> None:
        store = RecordingStore(tmp_path / "repo")
        repo = await open_repo(store)  # 1 MiB packs, 1 MiB read batches
        await repo.log([Source(str(data))], project="p", name="d", type="dataset")
        sizes = [(await store.head(k)).size for k in store.packs]
        assert len(sizes) >= 8
        # target + one chunk (max 1 MiB here) + trailer, at most
        assert max(sizes) <= (1 << 20) + (1 << 20) + 65536, sizes  # the old code made 2.4 MiB

    asyncio.run(go())


@pytest.mark.parametrize(("buffer", "most"), [("1M", 1), ("3M", 3)])
def test_put_buffer_bounds_the_packs_held_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, buffer: str, most: int
) -> None:
    """SYNCENGINE_PUT_BUFFER / pack size = finished packs a put holds (uploading) at once."""
    monkeypatch.setenv("SYNCENGINE_PUT_BUFFER", buffer)
    data = tmp_path / "data"
    make_data(data)

    class SlowPacks(LocalStore):
        active = 0
        peak = 0

        async def put(
            self, key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
        ) -> ObjectInfo:
            if not key.startswith("data/"):
                return await super().put(key, body, if_none_match=if_none_match, if_match=if_match)
            SlowPacks.active += 1
            SlowPacks.peak = max(SlowPacks.peak, SlowPacks.active)
            try:
                await asyncio.sleep(0.05)  # widens the window in which packs could pile up
                return await super().put(key, body, if_none_match=if_none_match, if_match=if_match)
            finally:
                SlowPacks.active -= 1

    async def go() -> None:
        repo = await open_repo(SlowPacks(tmp_path / "repo"))
        r = await repo.log([Source(str(data))], project="p", name="d", type="dataset")
        assert r.packs >= 6  # ~8 MB in 1 MiB packs (the threads' last ones merged)
        await repo.store.close()  # type: ignore[attr-defined]

    asyncio.run(go())
    assert 1 <= SlowPacks.peak <= most

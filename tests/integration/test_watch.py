"""The watch daemon as a library (`syncengine.Watcher`) on a local repository: settling,
markers, torn files, keep-last, alias best, files mode, backpressure and skip-intermediate."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from syncengine import aio
from syncengine.watch import Watcher, WatchEvent

pytestmark = pytest.mark.asyncio

TIMEOUT = 30.0


class Recorder:
    """The watcher's events, and a way to wait for one (woken by each new event)."""

    def __init__(self) -> None:
        self.events: list[WatchEvent] = []
        self.hooks: list[Callable[[WatchEvent], None]] = []
        self._new = asyncio.Event()

    def __call__(self, e: WatchEvent) -> None:
        self.events.append(e)
        for hook in self.hooks:
            hook(e)
        self._new.set()

    def of(self, event: str, checkpoint: str | None = None) -> list[WatchEvent]:
        return [e for e in self.events if e.event == event and checkpoint in (None, e.checkpoint)]

    async def wait(self, pred: Callable[[Recorder], bool], what: str) -> None:
        async def loop() -> None:
            while not pred(self):
                self._new.clear()
                await self._new.wait()

        try:
            await asyncio.wait_for(loop(), TIMEOUT)
        except TimeoutError:
            got = "\n".join(e.to_text() for e in self.events)
            raise AssertionError(f"timed out waiting for {what}; events:\n{got}") from None

    async def logged(self, n: int) -> None:
        await self.wait(lambda r: len(r.of("logged")) >= n, f"{n} logged")


class Running:
    def __init__(self, watcher: Watcher, task: asyncio.Task[None], rec: Recorder) -> None:
        self.watcher, self.task, self.rec = watcher, task, rec

    async def stop(self) -> None:
        self.watcher.stop()
        await asyncio.wait_for(self.task, TIMEOUT)


async def start(repo: aio.Repository, folder: Path, tmp_path: Path, **kw: Any) -> Running:
    rec = Recorder()
    kw.setdefault("settle", 0.5)
    w = Watcher(folder, "p/ckpt", repo=repo, on_event=rec, journal_path=tmp_path / "watch.sqlite", **kw)
    task = asyncio.ensure_future(w.arun())
    await rec.wait(lambda r: bool(r.of("start")), "start")
    return Running(w, task, rec)


def write_checkpoint(folder: Path, name: str, content: bytes, metrics: dict[str, Any] | None = None) -> None:
    d = folder / name
    d.mkdir(parents=True)
    (d / "model.bin").write_bytes(content)
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))


async def versions(repo: aio.Repository) -> list[aio.ArtifactVersion]:
    return await repo.artifact_versions("p/ckpt")


async def content_of(v: aio.ArtifactVersion, path: str = "model.bin") -> bytes:
    root = await v.download(str(Path(os.environ["SYNCENGINE_CACHE_DIR"]).parent / f"dl-{v.version}"))
    return (Path(root) / path).read_bytes()


@pytest.fixture
async def repo(tmp_path: Path) -> Any:
    r = await aio.Repository.open(str(tmp_path / "repo"))
    yield r
    await r.close()


async def test_a_settled_checkpoint_is_logged_once_with_its_name_and_step(
    repo: aio.Repository, tmp_path: Path
) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    run = await start(repo, folder, tmp_path)
    d = folder / "checkpoint-500"
    d.mkdir()
    with open(d / "model.bin", "wb") as f:  # written in pieces, as a trainer does
        for i in range(20):
            f.write(bytes([i]) * 50_000)
            f.flush()
    await run.rec.logged(1)
    await run.stop()
    vs = await versions(repo)
    assert [v.version for v in vs] == ["v0"]
    assert vs[0].metadata["watch.checkpoint"] == "checkpoint-500"
    assert vs[0].metadata["step"] == 500
    assert await content_of(vs[0]) == (d / "model.bin").read_bytes()
    assert run.rec.of("ready")[0].fields["by"].startswith("unchanged for")


@pytest.mark.parametrize(
    "marker",
    ["sibling", "inside", "deepspeed"],
)
async def test_a_completion_marker_logs_the_checkpoint_without_waiting_for_the_settle_time(
    repo: aio.Repository, tmp_path: Path, marker: str
) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    run = await start(repo, folder, tmp_path, settle=3600)  # never settles by time in this test
    write_checkpoint(folder, "global_step7", b"weights")
    if marker == "sibling":
        (folder / "global_step7.done").write_text("")
    elif marker == "inside":
        (folder / "global_step7" / "_SUCCESS").write_text("")
    else:
        (folder / "latest").write_text("global_step7")
    await run.rec.logged(1)
    await run.stop()
    assert [v.version for v in await versions(repo)] == ["v0"]
    assert "marker" in run.rec.of("ready")[0].fields["by"]


async def test_a_file_changed_while_being_logged_is_not_logged_until_it_is_stable(
    repo: aio.Repository, tmp_path: Path
) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    write_checkpoint(folder, "step1", b"A" * 100_000)
    (folder / "step1.done").write_text("")
    model = folder / "step1" / "model.bin"
    run_started = await start(repo, folder, tmp_path)
    rec = run_started.rec
    appended: list[str] = []

    def trainer(e: WatchEvent) -> None:
        # The trainer is still writing: one more piece once the upload started, another
        # once the watcher reacted (a torn version would hold the first piece only).
        if e.checkpoint != "step1":
            return
        if e.event == "uploading" and not appended:
            with open(model, "ab") as f:
                f.write(b"B" * 1000)
            appended.append("B")
        elif e.event in ("changed", "logged") and appended == ["B"]:
            with open(model, "ab") as f:
                f.write(b"C" * 1000)
            appended.append("C")

    rec.hooks.append(trainer)
    # (the first upload may have started before the hook: the watcher restarts it below)
    await rec.wait(
        lambda r: any(e.fields.get("bytes") == 102_000 for e in r.of("logged")), "the final content"
    )
    await run_started.stop()
    vs = await versions(repo)
    assert len(vs) == 1, [v.version for v in vs]  # no version of the half-written file
    assert await content_of(vs[0]) == model.read_bytes() == b"A" * 100_000 + b"B" * 1000 + b"C" * 1000
    assert rec.of("changed", "step1")
    assert (
        rec.of("ready", "step1")[-1].fields["by"].startswith("unchanged")
    )  # the marker is not trusted again


async def test_keep_last_deletes_older_versions_and_alias_best_follows_the_metric(
    repo: aio.Repository, tmp_path: Path
) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    losses = [0.9, 0.2, 0.5, 0.4]
    run = await start(repo, folder, tmp_path, keep_last=2, alias_best="loss")
    for i, loss in enumerate(losses, 1):
        write_checkpoint(folder, f"step{i}", f"weights {i}".encode(), {"loss": loss})
        (folder / f"step{i}.done").write_text("")
        await run.rec.logged(i)
    await run.stop()
    vs = {v.version: v for v in await versions(repo)}
    # the newest two, plus v1 (step2, the lowest loss) which holds `best`
    assert sorted(vs) == ["v1", "v2", "v3"]
    assert "best" in vs["v1"].aliases and "latest" in vs["v3"].aliases
    assert vs["v1"].metadata["metrics"] == {"loss": 0.2}
    assert [e.fields["version"] for e in run.rec.of("best")] == ["v0", "v1"]
    assert [e.fields["version"] for e in run.rec.of("deleted")] == ["v0"]


async def test_best_mode_max_moves_best_to_the_highest_value(repo: aio.Repository, tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    run = await start(repo, folder, tmp_path, alias_best="acc", best_mode="max")
    for i, acc in enumerate([0.5, 0.7, 0.6], 1):
        write_checkpoint(folder, f"step{i}", f"w{i}".encode(), {"acc": acc})
        (folder / f"step{i}.done").write_text("")
        await run.rec.logged(i)
    await run.stop()
    best = await repo.artifact("p/ckpt:best")
    assert best.version == "v1"


async def test_files_mode_grows_one_file_set_and_keep_last_trims_it(
    repo: aio.Repository, tmp_path: Path
) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    run = await start(repo, folder, tmp_path, mode="files", keep_last=2)
    for i in range(1, 4):
        write_checkpoint(folder, f"step{i}", f"weights {i}".encode())
        (folder / f"step{i}.done").write_text("")
        await run.rec.logged(i)
    await run.stop()
    latest = await repo.artifact("p/ckpt:latest")
    assert sorted((await latest.manifest()).entries) == ["step2/model.bin", "step3/model.bin"]
    assert latest.metadata["watch.checkpoints"] == ["step2", "step3"]
    assert [v.version for v in await versions(repo)] == [latest.version]  # older versions cleaned


class GatedStore:
    """The real local store; pack writes wait for `gate` (to hold an upload in progress)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = asyncio.Event()

    async def put(self, key: str, *args: Any, **kwargs: Any) -> Any:
        if key.startswith("data/"):
            await self.gate.wait()
        return await self.inner.put(key, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("skip", [False, True])
async def test_checkpoints_arriving_during_an_upload_wait_in_the_journal_or_are_skipped(
    repo: aio.Repository, tmp_path: Path, skip: bool
) -> None:
    gated = GatedStore(repo.core.store)
    repo.core.store = gated  # type: ignore[assignment]
    folder = tmp_path / "ckpt"
    folder.mkdir()
    run = await start(repo, folder, tmp_path, skip_intermediate=skip)
    write_checkpoint(folder, "step1", b"one" * 1000)
    (folder / "step1.done").write_text("")
    await run.rec.wait(lambda r: bool(r.of("uploading", "step1")), "step1 uploading")
    for i in (2, 3, 4):
        write_checkpoint(folder, f"step{i}", f"w{i}".encode() * 1000)
        (folder / f"step{i}.done").write_text("")
    await run.rec.wait(lambda r: len(r.of("waiting")) == 3, "three waiting")
    assert [e.fields["waiting"] for e in run.rec.of("waiting")] == [1, 2, 3]
    gated.gate.set()
    await run.rec.logged(2 if skip else 4)
    await run.stop()
    logged = [e.checkpoint for e in run.rec.of("logged")]
    if skip:
        assert logged == ["step1", "step4"]
        assert sorted(e.checkpoint or "" for e in run.rec.of("skipped")) == ["step2", "step3"]
    else:
        assert logged == ["step1", "step2", "step3", "step4"]


async def test_a_restart_logs_what_was_missed_and_nothing_twice(repo: aio.Repository, tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    write_checkpoint(folder, "step1", b"one")
    (folder / "step1.done").write_text("")
    run = await start(repo, folder, tmp_path)
    await run.rec.logged(1)
    await run.stop()
    write_checkpoint(folder, "step2", b"two")  # written while no watcher ran
    run = await start(repo, folder, tmp_path)
    await run.rec.logged(1)
    await run.stop()
    assert [e.checkpoint for e in run.rec.of("logged")] == ["step2"]
    assert [v.metadata["watch.checkpoint"] for v in await versions(repo)] == ["step1", "step2"]


async def test_a_single_file_checkpoint_with_a_json_sidecar(repo: aio.Repository, tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    run = await start(repo, folder, tmp_path, pattern="*.ckpt", alias_best="val_loss")
    (folder / "epoch=3-step=1200.ckpt").write_bytes(b"lightning")
    (folder / "epoch=3-step=1200.json").write_text(json.dumps({"val_loss": 1.5}))
    (folder / "notes.txt").write_text("not a checkpoint")
    await run.rec.logged(1)
    await run.stop()
    (v,) = await versions(repo)
    assert v.metadata["step"] == 1200 and v.metadata["metrics"] == {"val_loss": 1.5}
    assert list((await v.manifest()).entries) == ["epoch=3-step=1200.ckpt"]
    assert "best" in v.aliases


async def test_a_failing_before_commit_records_no_version_and_the_retry_sends_nothing_again(
    repo: aio.Repository, tmp_path: Path
) -> None:
    from syncengine.hashing.tree import Source
    from syncengine.repo.repository import ArtifactNotFound
    from syncengine.watch import CheckpointChanged

    src = tmp_path / "src"
    src.mkdir()
    (src / "w.bin").write_bytes(os.urandom(300_000))
    core = repo.core

    async def changed() -> None:
        raise CheckpointChanged("moved")

    with pytest.raises(CheckpointChanged):
        await core.log([Source(str(src))], project="p", name="ckpt", type="model", before_commit=changed)
    with pytest.raises(ArtifactNotFound):
        await repo.artifact("p/ckpt")
    calls: list[int] = []

    async def fine() -> None:
        calls.append(1)

    result = await core.log([Source(str(src))], project="p", name="ckpt", type="model", before_commit=fine)
    assert result.created and result.record.version == 0 and calls == [1]
    assert result.new_bytes == 0  # the first attempt's packs were indexed: nothing sent again


async def test_a_type_other_than_the_artifacts_fails_at_start_in_one_line(
    repo: aio.Repository, tmp_path: Path
) -> None:
    from syncengine.repo.repository import TypeMismatch

    folder = tmp_path / "ckpt"
    write_checkpoint(folder, "step1", b"w")
    (folder / "step1.done").write_text("")
    run = await start(repo, folder, tmp_path)
    await run.rec.logged(1)
    await run.stop()
    w = Watcher(folder, "p/ckpt", "dataset", repo=repo, journal_path=tmp_path / "watch.sqlite")
    with pytest.raises(TypeMismatch, match="has type 'model', not 'dataset'"):
        await w.arun()

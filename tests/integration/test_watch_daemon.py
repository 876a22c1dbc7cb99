"""`syncengine watch` as a real process: a simulated trainer writes checkpoints slowly while the
daemon logs them into SeaweedFS; it is killed with SIGKILL mid-way and restarted; SIGTERM ends
it cleanly; every --log-json line parses."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import syncengine as se
from tests.children import default_sigint
from tests.s3server import S3TestServer

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60.0


class Daemon:
    """`syncengine watch … --log-json` in a child process; its events read as they come."""

    def __init__(self, folder: Path, repo: str, *args: str) -> None:
        cmd = [sys.executable, "-m", "syncengine", "watch", str(folder), "-n", "p/ckpt", "--log-json"]
        self.proc = subprocess.Popen(
            [*cmd, "--repo", repo, *args],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=default_sigint,  # `stop(SIGINT)` stands in for Ctrl-C
        )
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self._q.put(json.loads(line))  # a line that is not JSON fails the test (reported at wait)
        self._q.put(None)

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        for e in self.events:
            if pred(e):
                return e
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                e = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                raise AssertionError(f"no {what} in {TIMEOUT} s: {self.events}") from None
            if e is None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"the daemon ended before {what}: {self.events} {err}")
            self.events.append(e)
            if pred(e):
                return e

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Sends `sig`; the exit code once the process ended (all its events read)."""
        self.proc.send_signal(sig)
        rc = self.proc.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        while (e := self._q.get_nowait()) is not None:
            self.events.append(e)
        return rc


def logged(*daemons: Daemon) -> set[str]:
    return {e["checkpoint"] for d in daemons for e in d.events if e["event"] == "logged"}


@pytest.fixture
def s3_env(s3_server: S3TestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)


@pytest.mark.usefixtures("s3_env")
def test_kill_9_mid_upload_then_restart_logs_each_of_five_checkpoints_exactly_once(
    tmp_path: Path, s3_bucket: str
) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    repo = f"s3://{s3_bucket}/watch"
    first = Daemon(folder, repo, "--settle", "1s")
    first.wait_for(lambda e: e["event"] == "start", "start")
    trainer = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.watch_trainer", str(folder), "5"],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
    )
    first.wait_for(lambda e: e["event"] == "uploading" and e["checkpoint"] == "step3", "step3 uploading")
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL  # while step3 is being logged
    second = Daemon(folder, repo, "--settle", "1s")
    assert trainer.wait(TIMEOUT) == 0
    names = {f"step{i}" for i in range(1, 6)}
    second.wait_for(lambda e: logged(first, second) >= names, "all five logged")
    assert second.stop(signal.SIGTERM) == 0
    assert second.events[-1]["event"] == "stopped"
    if "step3" not in logged(first):
        assert any(e["event"] == "resume" and e["checkpoint"] == "step3" for e in second.events)

    r = se.Repository.open(repo)
    versions = r.artifact_versions("p/ckpt")
    assert len(versions) == 5
    assert sorted(v.metadata["watch.checkpoint"] for v in versions) == sorted(names)
    for v in versions:
        name = v.metadata["watch.checkpoint"]
        root = Path(v.download(str(tmp_path / "dl" / v.version)))
        got = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        want = {p.name: p.read_bytes() for p in (folder / name).iterdir()}
        assert got == want, name
    for line in first.lines + second.lines:
        e = json.loads(line)
        assert isinstance(e["event"], str) and e["time"].endswith("Z")


@pytest.mark.parametrize("stop_timeout", ["30s", "0s"])
def test_sigterm_during_an_upload_finishes_or_journals_it_and_exits_0(
    tmp_path: Path, stop_timeout: str
) -> None:
    folder = tmp_path / "run"
    (folder / "step1").mkdir(parents=True)
    (folder / "step1" / "model.bin").write_bytes(os.urandom(48 << 20))
    (folder / "step1.done").write_text("")
    repo = str(tmp_path / "repo")
    d = Daemon(folder, repo, "--settle", "1h", "--stop-timeout", stop_timeout)
    d.wait_for(lambda e: e["event"] == "uploading", "uploading")
    assert d.stop(signal.SIGTERM) == 0
    events = [e["event"] for e in d.events]
    assert events[-1] == "stopped"
    assert "logged" in events or "interrupted" in events
    if stop_timeout == "30s":
        assert "logged" in events
    again = Daemon(folder, repo, "--settle", "1h")
    if "interrupted" in events:  # journaled as uploading: the next run logs it
        again.wait_for(lambda e: e["event"] == "resume", "resume")
        again.wait_for(lambda e: e["event"] == "logged", "logged")
    else:
        again.wait_for(lambda e: e["event"] == "start", "start")
    assert again.stop(signal.SIGINT) == 0
    assert "uploading" not in [e["event"] for e in again.events if "interrupted" not in events]
    assert len(se.Repository.open(repo).artifact_versions("p/ckpt")) == 1

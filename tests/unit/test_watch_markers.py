"""Which entries of a watched folder are checkpoints, their completion markers, steps and metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from syncengine.watch.markers import completion_marker, is_checkpoint_name, read_metrics, signature


@pytest.mark.parametrize(
    ("name", "pattern", "expected"),
    [
        ("step3", "*", True),
        ("checkpoint-500", "checkpoint-*", True),
        ("step3.done", "*", False),
        ("tmp-checkpoint-500", "*", False),  # HF Trainer's staging folder
        ("latest", "*", False),
        ("metrics.json", "*", False),
        (".hidden", "*", False),
        ("last.ckpt.tmp", "*.ckpt*", False),
        ("notes.txt", "*.ckpt", False),
    ],
)
def test_checkpoint_names(name: str, pattern: str, expected: bool) -> None:
    assert is_checkpoint_name(name, pattern) is expected


def test_each_recognised_marker(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert completion_marker(str(tmp_path), "a") is None
    (tmp_path / "a.done").write_text("")
    assert completion_marker(str(tmp_path), "a") == "a.done"
    for m in (".done", "_SUCCESS", "commit_success.txt"):
        (tmp_path / m.strip(".")).mkdir()
        (tmp_path / m.strip(".") / m).write_text("")
        assert completion_marker(str(tmp_path), m.strip(".")) == f"{m.strip('.')}/{m}"
    (tmp_path / "global_step20").mkdir()
    (tmp_path / "latest").write_text("global_step10")
    assert completion_marker(str(tmp_path), "global_step20") is None
    (tmp_path / "latest").write_text("global_step20\n")
    assert completion_marker(str(tmp_path), "global_step20") == "latest"
    (tmp_path / "iter_0000100").mkdir()
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("100")
    assert completion_marker(str(tmp_path), "iter_0000100") == "latest_checkpointed_iteration.txt"
    tf = tmp_path / "tf"
    tf.mkdir()
    (tf / "checkpoint").write_text('model_checkpoint_path: "ckpt-3"\nall_model_checkpoint_paths: "ckpt-3"\n')
    assert completion_marker(str(tmp_path), "tf") is None  # the index is not written yet
    (tf / "ckpt-3.index").write_bytes(b"i")
    assert completion_marker(str(tmp_path), "tf") == "tf/checkpoint"


def test_metrics_and_step_sources(tmp_path: Path) -> None:
    hf = tmp_path / "checkpoint-500"
    hf.mkdir()
    state = {"global_step": 500, "log_history": [{"loss": 2.0}, {"eval_loss": 1.5, "loss": 1.0}], "x": [1]}
    (hf / "trainer_state.json").write_text(json.dumps(state))
    metrics, step = read_metrics(str(tmp_path), "checkpoint-500")
    assert step == 500 and metrics["eval_loss"] == 1.5 and metrics["loss"] == 1.0
    (hf / "metrics.json").write_text(json.dumps({"acc": 0.9, "step": 499, "nested": {"no": 1}}))
    assert read_metrics(str(tmp_path), "checkpoint-500") == ({"acc": 0.9, "step": 499}, 499)
    (tmp_path / "epoch=3-step=1200.ckpt").write_bytes(b"x")
    assert read_metrics(str(tmp_path), "epoch=3-step=1200.ckpt") == ({}, 1200)


def test_the_signature_changes_with_any_write(tmp_path: Path) -> None:
    d = tmp_path / "c"
    d.mkdir()
    assert signature(str(d)) is None  # an empty folder is not a checkpoint yet
    (d / "w").write_bytes(b"1")
    one = signature(str(d))
    assert one is not None and one == signature(str(d))
    st = os.stat(d / "w")
    (d / "w").write_bytes(b"2")  # same size
    os.utime(d / "w", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert signature(str(d)) != one
    (d / "sub").mkdir()
    (d / "sub" / "x").write_bytes(b"")
    assert [f[0] for f in signature(str(d)).files] == ["sub/x", "w"]  # type: ignore[union-attr]

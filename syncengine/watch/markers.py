"""What a watched folder holds: which entries are checkpoints, their stat signature, their
completion markers, and the step and metrics a checkpoint carries (docs/WATCH.md).

Everything here reads the file system and nothing else; the watcher (syncengine.watch.watcher)
decides when to log.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Final

import blake3 as _blake3
import msgspec

#: Top-level names that are never checkpoints: markers, trainers' pointer files, metric
#: sidecars, and names trainers and copy tools give to files still being written.
IGNORED: Final = (
    ".*",
    "*.done",
    "*.tmp",
    "*.temp",
    "*.part",
    "*.partial",
    "*.lock",
    "*.json",
    "tmp-*",
    "tmp_*",
    "latest",
    "latest_universal",
    "latest_checkpointed_iteration.txt",
    "checkpoint",
)

#: Files inside a checkpoint folder that say it is complete.
FOLDER_MARKERS: Final = (".done", "_SUCCESS", "commit_success.txt")

#: Pointer files in the watched folder naming the newest complete checkpoint folder:
#: DeepSpeed's `latest` / `latest_universal` (the tag, e.g. ``global_step100``).
POINTER_FILES: Final = ("latest", "latest_universal")

#: Megatron-LM's tracker file: the iteration of the newest complete ``iter_NNNNNNN`` folder.
MEGATRON_TRACKER: Final = "latest_checkpointed_iteration.txt"

_TF_PATH = re.compile(r'^model_checkpoint_path:\s*"([^"]+)"', re.MULTILINE)
_LAST_INT = re.compile(r"(\d+)(?!.*\d)")


def is_checkpoint_name(name: str, pattern: str) -> bool:
    """A top-level entry is a checkpoint when it matches `pattern` and none of `IGNORED`."""
    return fnmatch.fnmatchcase(name, pattern) and not any(fnmatch.fnmatchcase(name, g) for g in IGNORED)


@dataclass(frozen=True)
class Signature:
    """The stat of every file of a checkpoint: (relative path, size, mtime_ns, inode), sorted.
    Two equal signatures mean nothing was written, replaced or removed in between."""

    files: tuple[tuple[str, int, int, int], ...]

    @property
    def digest(self) -> bytes:
        return _blake3.blake3(msgspec.msgpack.encode(self.files)).digest()

    @property
    def bytes(self) -> int:
        return sum(f[1] for f in self.files)

    @property
    def newest_mtime_ns(self) -> int:
        return max((f[2] for f in self.files), default=0)


def signature(path: str) -> Signature | None:
    """The signature of the file or folder `path`; None if it is gone or holds no file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if not os.path.isdir(path):
        return Signature((("", st.st_size, st.st_mtime_ns, st.st_ino),))
    out: list[tuple[str, int, int, int]] = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        rel = os.path.relpath(root, path)
        for f in files:
            try:
                s = os.stat(os.path.join(root, f))
            except FileNotFoundError:
                continue  # removed while walked: the next signature differs anyway
            out.append((f if rel == "." else f"{rel}/{f}", s.st_size, s.st_mtime_ns, s.st_ino))
    if not out:
        return None
    out.sort()
    return Signature(tuple(out))


def _read_small(path: str, limit: int = 4096) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(limit)
    except OSError:
        return None


def completion_marker(directory: str, name: str) -> str | None:
    """The marker that says checkpoint `name` of `directory` is complete, or None:

    - ``NAME.done`` beside it;
    - in a checkpoint folder: ``.done``, ``_SUCCESS`` (Hadoop/Spark style) or
      ``commit_success.txt`` (Orbax);
    - DeepSpeed's ``latest`` / ``latest_universal`` in the watched folder naming it (written
      after the whole tag folder);
    - Megatron-LM's ``latest_checkpointed_iteration.txt`` holding N for ``iter_{N:07d}``;
    - in a checkpoint folder, TensorFlow's ``checkpoint`` state file whose
      ``model_checkpoint_path`` names a prefix whose ``.index`` exists (TF writes the state
      file after the data and index files).
    """
    path = os.path.join(directory, name)
    if os.path.exists(path + ".done"):
        return f"{name}.done"
    is_dir = os.path.isdir(path)
    if is_dir:
        for m in FOLDER_MARKERS:
            if os.path.exists(os.path.join(path, m)):
                return f"{name}/{m}"
    for pointer in POINTER_FILES:
        text = _read_small(os.path.join(directory, pointer))
        if text is not None and text.strip() == name:
            return pointer
    text = _read_small(os.path.join(directory, MEGATRON_TRACKER))
    if text is not None and text.strip().isdigit() and name == f"iter_{int(text.strip()):07d}":
        return MEGATRON_TRACKER
    if is_dir:
        text = _read_small(os.path.join(path, "checkpoint"))
        found = _TF_PATH.search(text) if text else None
        if found and os.path.exists(os.path.join(path, found.group(1) + ".index")):
            return f"{name}/checkpoint"
    return None


def _load_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _scalars(d: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in d.items()
        if isinstance(k, str)
        and (isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= 200))
    }


def read_metrics(directory: str, name: str) -> tuple[dict[str, Any], int | None]:
    """The checkpoint's metrics (scalar values only) and step, from the first source found:

    1. ``NAME/metrics.json`` (a folder checkpoint) or the sidecar ``NAME.json`` / ``STEM.json``
       beside a file checkpoint: a JSON object;
    2. ``NAME/trainer_state.json`` (Hugging Face Trainer): its ``log_history`` entries merged
       in order (so the newest value of each key wins), plus ``global_step``, ``epoch`` and
       ``best_metric``.

    The step is the metrics' ``step`` or ``global_step``, else the last number in the name
    (``checkpoint-500``, ``epoch=3-step=1200.ckpt``, ``global_step100``, ``iter_0000100``)."""
    path = os.path.join(directory, name)
    metrics: dict[str, Any] = {}
    if os.path.isdir(path):
        found = _load_json(os.path.join(path, "metrics.json"))
        if found is not None:
            metrics = _scalars(found)
        else:
            state = _load_json(os.path.join(path, "trainer_state.json"))
            if state is not None:
                merged: dict[str, Any] = {}
                for entry in state.get("log_history") or []:
                    if isinstance(entry, dict):
                        merged.update(_scalars(entry))
                for k in ("global_step", "epoch", "best_metric"):
                    if isinstance(state.get(k), (int, float)):
                        merged[k] = state[k]
                metrics = merged
    else:
        stem = os.path.splitext(name)[0]
        for side in (f"{name}.json", f"{stem}.json"):
            found = _load_json(os.path.join(directory, side))
            if found is not None:
                metrics = _scalars(found)
                break
    step: int | None = None
    for k in ("step", "global_step"):
        v = metrics.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            step = v
            break
    if step is None:
        m = _LAST_INT.search(name)
        step = int(m.group(1)) if m else None
    return metrics, step


def natural_key(name: str) -> tuple[Any, ...]:
    """Sorts ``step2`` before ``step10``."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))

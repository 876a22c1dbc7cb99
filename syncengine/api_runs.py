"""Runs in the sync facade: `with repo.run(project=..., job_type=...) as run:` (see `syncengine.aio_runs`).

>>> import tempfile, pathlib
>>> from syncengine.api import Artifact, Repository
>>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "w.bin").write_bytes(b"w")
>>> repo = Repository.open(str(d / "repo"))
>>> with repo.run(project="vision", job_type="train") as run:
...     art = Artifact("model", type="model"); art.add_file(str(d / "w.bin"))
...     v = run.log_artifact(art)
>>> v.logged_by().id == run.id
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from syncengine import aio_runs

if TYPE_CHECKING:
    from syncengine.api import Artifact, ArtifactVersion, Draft


def _run(coro: Any) -> Any:
    from syncengine.api import _Loop

    return _Loop.run(coro)


def _wrap(v: Any) -> ArtifactVersion:
    from syncengine.api import ArtifactVersion

    return ArtifactVersion(v)


class Run:
    """A run; attributes (`id`, `project`, `job_type`, `group`, `config`, `summary`, `state`,
    `record`) are those of `syncengine.aio_runs.Run`."""

    def __init__(self, inner: aio_runs.Run) -> None:
        object.__setattr__(self, "_inner", inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)

    def __repr__(self) -> str:
        return repr(self._inner)

    def __enter__(self) -> Run:
        _run(self._inner.start())
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        _run(self._inner.finish(exc))

    def start(self) -> Run:
        _run(self._inner.start())
        return self

    def finish(self, error: BaseException | None = None) -> None:
        _run(self._inner.finish(error))

    def save(self) -> None:
        _run(self._inner.save())

    def use_artifact(self, ref: str, type: str | None = None) -> ArtifactVersion:
        return _wrap(_run(self._inner.use_artifact(ref, type)))

    def log_artifact(
        self,
        artifact: Artifact | Draft,
        aliases: Sequence[str] = (),
        tags: Sequence[str] = (),
        project: str | None = None,
    ) -> ArtifactVersion:
        from syncengine.api import Draft

        inner = artifact._inner if isinstance(artifact, Draft) else artifact
        return _wrap(_run(self._inner.log_artifact(inner, aliases, tags, project)))

    def upsert_artifact(
        self, artifact: Artifact, distributed_id: str | None = None, project: str | None = None
    ) -> None:
        _run(self._inner.upsert_artifact(artifact, distributed_id, project))

    def finish_artifact(
        self,
        artifact: Artifact,
        distributed_id: str | None = None,
        aliases: Sequence[str] = (),
        tags: Sequence[str] = (),
        project: str | None = None,
    ) -> ArtifactVersion:
        return _wrap(_run(self._inner.finish_artifact(artifact, distributed_id, aliases, tags, project)))

    def used_artifacts(self) -> list[ArtifactVersion]:
        return [_wrap(v) for v in _run(self._inner.used_artifacts())]

    def logged_artifacts(self) -> list[ArtifactVersion]:
        return [_wrap(v) for v in _run(self._inner.logged_artifacts())]


def wrap_run(inner: aio_runs.Run | None) -> Run | None:
    return None if inner is None else Run(inner)

"""Property: any sequence of logs, deletions, alias moves and removals (`latest` among them)
and cleanups leaves the repository agreeing with a simple model of the W&B rules
(docs/DELETION.md)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncengine.hashing.params import ChunkerParams
from syncengine.hashing.tree import Source
from syncengine.repo.lifecycle import AliasedVersion, cleanup, delete_version
from syncengine.repo.records import parse_ref
from syncengine.repo.repository import ArtifactNotFound, Repository, VersionDeleted
from syncengine.store.local import LocalStore

PARAMS = ChunkerParams(4096, 16384, 65536)
ALIASES = ("best", "prod", "latest")

op = st.one_of(
    st.tuples(st.just("log"), st.integers(0, 3)),  # content id: repeats test identical content
    st.tuples(st.just("delete"), st.integers(0, 9), st.booleans()),
    st.tuples(st.just("alias"), st.integers(0, 9), st.sampled_from(ALIASES)),
    st.tuples(st.just("unalias"), st.integers(0, 9), st.sampled_from(ALIASES)),
    st.tuples(st.just("cleanup"), st.integers(0, 3)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=1, max_size=14))
def test_operations_agree_with_the_model(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_run(Path(tmp), ops))


async def _run(tmp: Path, ops: list[tuple]) -> None:  # type: ignore[type-arg]
    repo = await Repository.open(LocalStore(tmp / "repo"), params=PARAMS)
    live: dict[int, int] = {}  # version -> content id
    aliases: dict[str, int] = {}
    next_number = 0
    try:
        for o in ops:
            if o[0] == "log":
                src = tmp / f"c{o[1]}"
                src.mkdir(exist_ok=True)
                (src / "f").write_text(f"content {o[1]}")
                r = await repo.log([Source(str(src))], project="p", name="m", type="t", stat_cache=False)
                same = [v for v, c in live.items() if c == o[1]]
                if same:  # identical content finds the live version
                    assert r.record.version == same[0] and not r.created
                else:  # never a deleted one, never a reused number; `latest` goes to it
                    assert r.record.version == next_number and r.created
                    live[next_number] = o[1]
                    aliases["latest"] = next_number
                    next_number += 1
            elif o[0] == "delete":
                n, with_aliases = o[1], o[2]
                held = sorted(a for a, v in aliases.items() if v == n and a != "latest")
                if n >= next_number:
                    with contextlib.suppress(ArtifactNotFound):  # no such artifact/version yet
                        await delete_version(repo, "p", "m", n)
                        raise AssertionError("deleted a version that never existed")
                    continue
                if n in live and held and not with_aliases:
                    try:
                        await delete_version(repo, "p", "m", n)
                        raise AssertionError("an aliased version was deleted")
                    except AliasedVersion:
                        continue
                d = await delete_version(repo, "p", "m", n, delete_aliases=with_aliases)
                assert d.already_deleted == (n not in live)
                live.pop(n, None)
                for a in held:
                    del aliases[a]
                _move_latest(aliases, live, {n})
            elif o[0] == "alias":
                n, a = o[1], o[2]
                if n in live:
                    await repo.set_aliases("p", "m", n, add=[a])
                    aliases[a] = n
                else:
                    with contextlib.suppress(ArtifactNotFound):
                        await repo.set_aliases("p", "m", n, add=[a])
                        raise AssertionError("aliased a deleted or missing version")
            elif o[0] == "unalias":
                n, a = o[1], o[2]
                with contextlib.suppress(ArtifactNotFound):
                    await repo.set_aliases("p", "m", n, remove=[a])  # a no-op unless it names n
                    if aliases.get(a) == n:
                        del aliases[a]
            elif o[0] == "cleanup" and live:
                keep = o[1]
                newest = sorted(live)[max(0, len(live) - keep) :] if keep else []
                protected = {v for a, v in aliases.items() if a != "latest"}
                doomed = [v for v in sorted(live) if v not in protected and v not in newest]
                c = await cleanup(repo, "p", "m", keep_last=keep)
                assert [d.version for d in c.deleted] == doomed
                for v in doomed:
                    del live[v]
                _move_latest(aliases, live, set(doomed))
            await _agrees(repo, live, aliases)
    finally:
        await repo.store.close()


def _move_latest(aliases: dict[str, int], live: dict[int, int], gone: set[int]) -> None:
    """A deletion moves `latest` off a deleted version to the newest remaining one."""
    if aliases.get("latest") in gone:
        del aliases["latest"]
        if live:
            aliases["latest"] = max(live)


async def _agrees(repo: Repository, live: dict[int, int], aliases: dict[str, int]) -> None:
    try:
        head = await repo.head("p", "m")
    except ArtifactNotFound:
        assert not live
        return
    assert [r.version for r in await repo.versions("p", "m")] == sorted(live)
    assert head.aliases == aliases
    assert head.latest == (max(live) if live else None)
    assert sorted(head.digests.values()) == sorted(live)
    for text in ("p/m:latest", "p/m"):  # the holder of `latest`; none: not found
        if "latest" in aliases:
            assert (await repo.resolve(parse_ref(text))).version == aliases["latest"]
        else:
            with contextlib.suppress(ArtifactNotFound):
                await repo.resolve(parse_ref(text))
                raise AssertionError(f"{text} resolved though no version holds latest")
    for n in range(max(live, default=-1) + 2):
        ref = parse_ref(f"p/m:v{n}")
        if n in live:
            assert (await repo.resolve(ref)).version == n
        else:
            with contextlib.suppress(VersionDeleted, ArtifactNotFound):
                await repo.resolve(ref)
                raise AssertionError(f"v{n} resolved")

"""Drafts: a new version from a logged one plus added, replaced and removed files (local store and S3)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import blake3
import pytest

import syncengine as se
from syncengine import aio
from syncengine.errors import ConfigError
from syncengine.hashing.tree import Source
from syncengine.repo.draft import DraftChanges, DraftPathConflict, NotInDraft, log_draft
from syncengine.repo.manifest import ManifestBuilder, ManifestEntry, encode_manifest
from syncengine.repo.records import VersionRecord
from syncengine.repo.repository import Repository, _obj_key, _put_immutable
from syncengine.store.local import LocalStore
from tests.s3server import S3TestServer


def write(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


BASE = {"a.txt": b"a", "b.txt": b"b", "sub/c.txt": b"c", "sub/deep/d.txt": b"d"}


def tree_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_draft_adds_replaces_and_removes(tmp_path: Path) -> None:
    data = write(tmp_path / "data", BASE)
    extra = write(tmp_path / "extra", {"new.txt": b"new", "more/e.txt": b"e"})
    repo = se.Repository.open(str(tmp_path / "repo"))
    art = se.Artifact("ds", type="dataset", description="base", metadata={"rows": 4})
    art.add_dir(str(data))
    v0 = repo.log_artifact(art, project="p", aliases=["first"])

    draft = v0.new_draft()
    assert (draft.name, draft.type, draft.base_version) == ("p/ds", "dataset", "v0")
    assert (draft.description, draft.metadata) == ("base", {"rows": 4})
    write(tmp_path / "repl", {"a.txt": b"A2"})
    draft.add_file(str(tmp_path / "repl" / "a.txt"))  # replaces a.txt
    draft.add_dir(str(extra), name="extra")
    draft.remove("sub")  # the folder and everything under it
    draft.metadata["rows"] = 5
    draft.description = "edited"
    v1 = repo.log_artifact(draft, aliases=["best"], tags=["fixed"])

    assert v1.version == "v1" and sorted(v1.aliases) == ["best", "latest"]
    assert v1.tags == ["fixed"] and v0.tags == []  # tags name one version: not inherited
    assert (v1.description, v1.metadata, v1.type) == ("edited", {"rows": 5}, "dataset")
    out = Path(v1.download(str(tmp_path / "out")))
    assert tree_of(out) == {"a.txt": b"A2", "b.txt": b"b", "extra/new.txt": b"new", "extra/more/e.txt": b"e"}
    assert v1.files == 4 and v1.size == 2 + 1 + 3 + 1
    # the base is untouched
    again = Path(repo.artifact("p/ds:first").download(str(tmp_path / "out0")))
    assert tree_of(again) == BASE
    assert asyncio.run(_check(tmp_path / "repo")) == []
    repo.close()


async def _check(path: Path) -> list[str]:
    async with LocalStore(path) as store:
        return await (await Repository.open(store)).check(read_data=True)


def test_only_the_added_files_are_read(tmp_path: Path) -> None:
    data = write(tmp_path / "data", {f"f{i:03d}.bin": os.urandom(2000) for i in range(50)})
    repo = se.Repository.open(str(tmp_path / "repo"))
    art = se.Artifact("ds", type="dataset")
    art.add_dir(str(data))
    v0 = repo.log_artifact(art, project="p")
    for p in data.iterdir():  # the base's files are gone from disk: a draft never reads them
        p.unlink()
    new = write(tmp_path / "new", {"f007.bin": b"changed"})

    async def go() -> tuple[int, int, int]:
        async with LocalStore(tmp_path / "repo") as store:
            core = await Repository.open(store)
            changes = DraftChanges(v0.record)
            changes.add_file(str(new / "f007.bin"), None)
            r = await log_draft(core, changes, description="", metadata={})
            return r.files, r.new_blobs, r.record.files

    hashed, new_blobs, files = asyncio.run(go())
    assert (hashed, new_blobs, files) == (1, 1, 50)
    v1 = repo.artifact("p/ds:v1")
    assert v1.manifest.entries["f007.bin"].size == len(b"changed")
    repo.close()


def test_remove_names_what_the_draft_holds(tmp_path: Path) -> None:
    data = write(tmp_path / "data", BASE)
    repo = se.Repository.open(str(tmp_path / "repo"))
    art = se.Artifact("ds", type="dataset")
    art.add_dir(str(data))
    draft = repo.log_artifact(art, project="p").new_draft()
    with pytest.raises(NotInDraft, match=r"has no file or folder 'nope\.txt'"):
        draft.remove("nope.txt")
    with pytest.raises(NotInDraft):
        draft.remove("sub/c")  # a prefix of a name is not a folder
    draft.remove("sub/")
    with pytest.raises(NotInDraft, match="'sub/deep'"):
        draft.remove("sub/deep")  # removed with its folder already
    with pytest.raises(ConfigError):
        draft.remove("../a.txt")
    # staged files can be removed again; a later add brings a path back
    write(tmp_path / "x", {"x.txt": b"x"})
    draft.add_file(str(tmp_path / "x" / "x.txt"), name="sub/x.txt")
    draft.remove("sub/x.txt")
    draft.add_file(str(tmp_path / "x" / "x.txt"), name="sub/deep/d.txt")
    v1 = draft.save()
    assert sorted(v1.manifest.entries) == ["a.txt", "b.txt", "sub/deep/d.txt"]
    assert v1.manifest.entries["sub/deep/d.txt"].size == 1
    repo.close()


def test_remove_inside_a_staged_folder(tmp_path: Path) -> None:
    data = write(tmp_path / "data", BASE)
    extra = write(tmp_path / "extra", {"keep.txt": b"k", "more/drop.txt": b"d", "more/x/y.txt": b"y"})
    repo = se.Repository.open(str(tmp_path / "repo"))
    art = se.Artifact("ds", type="dataset")
    art.add_dir(str(data))
    draft = repo.log_artifact(art, project="p").new_draft()
    draft.add_dir(str(extra), name="extra")
    draft.remove("extra/more")
    with pytest.raises(NotInDraft):
        draft.remove("extra/more/x")  # gone with its folder
    with pytest.raises(NotInDraft):
        draft.remove("extra/nothing-here")
    v1 = draft.save()
    assert sorted(v1.manifest.entries) == sorted([*BASE, "extra/keep.txt"])
    repo.close()


def test_concurrent_drafts_of_one_base_get_distinct_versions(tmp_path: Path) -> None:
    data = write(tmp_path / "data", BASE)
    news = [write(tmp_path / f"n{i}", {"n.txt": f"new {i}".encode()}) for i in range(3)]

    async def go() -> list[tuple[str, int]]:
        async with await aio.Repository.open(str(tmp_path / "repo")) as repo:
            art = aio.Artifact("ds", type="dataset")
            art.add_dir(str(data))
            v0 = await repo.log_artifact(art, project="p")
            drafts = [v0.new_draft() for _ in news]
            for d, n in zip(drafts, news, strict=True):
                d.add_file(str(n / "n.txt"))
            saved = await asyncio.gather(*(d.save() for d in drafts))
            return [(v.version, (await v.manifest()).entries["n.txt"].size) for v in saved]

    got = asyncio.run(go())
    assert sorted(v for v, _ in got) == ["v1", "v2", "v3"]
    assert all(size == 5 for _, size in got)


def test_later_additions_win(tmp_path: Path) -> None:
    data = write(tmp_path / "data", BASE)
    one = write(tmp_path / "one", {"a.txt": b"from one", "z.txt": b"z1"})
    two = write(tmp_path / "two", {"z.txt": b"from two"})
    repo = se.Repository.open(str(tmp_path / "repo"))
    art = se.Artifact("ds", type="dataset")
    art.add_dir(str(data))
    draft = repo.log_artifact(art, project="p").new_draft()
    draft.add_dir(str(one))
    draft.add_file(str(two / "z.txt"))
    draft.add_file(str(data / "b.txt"), name="a.txt")  # the last word on a.txt
    out = Path(draft.save().download(str(tmp_path / "out")))
    assert tree_of(out) == {**BASE, "a.txt": b"b", "z.txt": b"from two"}
    repo.close()


def test_identical_content_is_the_existing_version(tmp_path: Path) -> None:
    data = write(tmp_path / "data", BASE)
    repo = se.Repository.open(str(tmp_path / "repo"))
    art = se.Artifact("ds", type="dataset")
    art.add_dir(str(data))
    v0 = repo.log_artifact(art, project="p")
    assert v0.new_draft().save(aliases=["same"]).version == "v0"  # no change
    draft = v0.new_draft()
    draft.add_file(str(data / "a.txt"))  # the same bytes again
    v = draft.save()
    assert v.version == "v0" and "same" in v.aliases
    assert [x.version for x in repo.artifact_versions("p/ds")] == ["v0"]
    repo.close()


def test_a_draft_logs_relative_to_its_base(tmp_path: Path) -> None:
    data = write(tmp_path / "data", BASE)
    repo = se.Repository.open(str(tmp_path / "repo"))
    art = se.Artifact("ds", type="dataset")
    art.add_dir(str(data))
    v0 = repo.log_artifact(art, project="p")
    draft = v0.new_draft()
    write(data, {"added-in-v1.txt": b"1"})
    art = se.Artifact("ds", type="dataset")
    art.add_dir(str(data))
    assert repo.log_artifact(art, project="p").version == "v1"
    draft.remove("b.txt")
    v2 = draft.save()
    assert v2.version == "v2" and "latest" in v2.aliases
    assert sorted(v2.manifest.entries) == ["a.txt", "sub/c.txt", "sub/deep/d.txt"]  # v0 minus b.txt
    repo.close()


def test_draft_with_an_other_project_is_refused(tmp_path: Path) -> None:
    data = write(tmp_path / "data", BASE)
    repo = se.Repository.open(str(tmp_path / "repo"))
    art = se.Artifact("ds", type="dataset")
    art.add_dir(str(data))
    draft = repo.log_artifact(art, project="p").new_draft()
    with pytest.raises(ConfigError, match="belongs to project 'p'"):
        repo.log_artifact(draft, project="q")
    repo.close()


def test_async_draft(tmp_path: Path) -> None:
    data = write(tmp_path / "data", BASE)

    async def go() -> list[str]:
        async with await aio.Repository.open(str(tmp_path / "repo")) as repo:
            art = aio.Artifact("ds", type="dataset")
            art.add_dir(str(data))
            v0 = await repo.log_artifact(art, project="p")
            draft = v0.new_draft()
            await draft.remove("a.txt")
            v1 = await repo.log_artifact(draft)
            return [v1.version, *sorted((await v1.manifest()).entries)]

    assert asyncio.run(go()) == ["v1", "b.txt", "sub/c.txt", "sub/deep/d.txt"]


# -- O(changed) manifest bytes -----------------------------------------------------------


async def _big_version(core: Repository, seed: VersionRecord, n: int) -> VersionRecord:
    """A version of `n` entries, all with the seed version's one file's content (so every
    blob exists), built directly: putting 100,000 real files would take most of a minute."""
    [template] = [e async for e in (await core.manifest(seed)).entries()]
    builder = ManifestBuilder()
    for i in range(n):
        e = ManifestEntry(f"d{i // 1000:03d}/f{i:06d}.txt", template.size, template.mode, template.digest)
        for pid, data in builder.add(e):
            await _put_immutable(core.store, _obj_key("manifests", pid), data)
    pages, m = builder.finish()
    for pid, data in pages:
        await _put_immutable(core.store, _obj_key("manifests", pid), data)
    mdata = encode_manifest(m)
    mkey = _obj_key("manifests", blake3.blake3(mdata).digest())
    await _put_immutable(core.store, mkey, mdata)
    digest = m.content_digest.hex()
    committed = await core._commit(seed.project, seed.name, seed.type, digest, m, mkey, [], "", {}, ())
    assert committed is not None
    return committed[0]


async def _manifest_objects(store: LocalStore) -> dict[str, int]:
    return {i.key: i.size async for i in store.list("manifests/")}


def _one_change_bytes(tmp_path: Path, n: int, samples: int = 8) -> tuple[float, int, list[int]]:
    """Mean manifest bytes a one-file draft writes (over `samples` drafts of the same base,
    each replacing one file at another place), the base manifest's bytes, and the number of
    new manifest objects each draft made. A page holds ~512 entries on average but the count
    varies page to page, hence the mean."""
    seed_dir = write(tmp_path / f"seed{n}", {"seed.txt": b"seed"})
    changed = write(tmp_path / f"changed{n}", {"f.txt": b"changed content"})

    async def go() -> tuple[float, int, list[int]]:
        async with LocalStore(tmp_path / f"repo{n}") as store:
            core = await Repository.open(store)
            seed = (await core.log([Source(str(seed_dir))], project="p", name="big", type="dataset")).record
            seed_keys = await _seed_objects(core, seed)
            big = await _big_version(core, seed, n)
            base_bytes = sum(s for k, s in (await _manifest_objects(store)).items() if k not in seed_keys)
            written, objects = [], []
            for k in range(samples):
                i = (2 * k + 1) * n // (2 * samples)
                before = await _manifest_objects(store)
                changes = DraftChanges(big)
                changes.add_file(str(changed / "f.txt"), f"d{i // 1000:03d}/f{i:06d}.txt")
                r = await log_draft(core, changes, description="", metadata={})
                assert r.record.files == n and r.files == 1  # a replaced file, and only it hashed
                new = {k: s for k, s in (await _manifest_objects(store)).items() if k not in before}
                written.append(sum(new.values()))
                objects.append(len(new))
            mean = sum(written) / samples
            print(f"{n} entries: {mean:.0f} manifest bytes written per one-file draft; base {base_bytes}")
            return mean, base_bytes, objects

    return asyncio.run(go())


async def _seed_objects(core: Repository, seed: VersionRecord) -> set[str]:
    reader = await core.manifest(seed)
    return {seed.manifest, _obj_key("manifests", reader.manifest.root)}


def test_one_changed_file_writes_bytes_independent_of_the_version_size(tmp_path: Path) -> None:
    small, small_base, small_objects = _one_change_bytes(tmp_path, 20_000)
    big, big_base, big_objects = _one_change_bytes(tmp_path, 100_000)
    assert small_base * 4 < big_base  # five times the entries, five times the manifest
    # Each draft wrote the leaf holding the file, the root above it and the manifest record.
    assert set(small_objects) == set(big_objects) == {3}
    # A few tens of KB (one leaf of ~512 entries, and a root of n/512 refs), not a share of n.
    assert big < 2 * small
    assert big < 128 * 1024
    assert big < big_base / 50  # under 2 % of the 100,000-entry manifest


# -- S3 ----------------------------------------------------------------------------------


def test_draft_on_s3(tmp_path: Path, s3_server: S3TestServer, s3_bucket: str) -> None:
    data = write(tmp_path / "data", {**BASE, **{f"many/{i:04d}": str(i).encode() for i in range(1500)}})
    new = write(tmp_path / "new", {"x.bin": os.urandom(300_000)})  # a chunked file
    repo = se.Repository.open(f"s3://{s3_bucket}/drafts", endpoint_url=s3_server.endpoint)
    try:
        art = se.Artifact("ds", type="dataset", metadata={"k": 1})
        art.add_dir(str(data))
        v0 = repo.log_artifact(art, project="p")
        draft = v0.new_draft()
        draft.add_file(str(new / "x.bin"), name="many/0700")
        draft.remove("sub")
        draft.remove("many/0001")
        v1 = repo.log_artifact(draft, aliases=["s3"])
        assert (v1.version, v1.metadata, v1.files) == ("v1", {"k": 1}, 2 + 1499)
        out = Path(repo.artifact("p/ds:s3").download(str(tmp_path / "out")))
        want = tree_of(data)
        for k in ("sub/c.txt", "sub/deep/d.txt", "many/0001"):
            del want[k]
        want["many/0700"] = (new / "x.bin").read_bytes()
        assert tree_of(out) == want
    finally:
        repo.close()


@pytest.fixture(autouse=True)
def _s3_credentials(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if "s3_server" in request.fixturenames:
        for k, v in request.getfixturevalue("s3_server").env().items():
            monkeypatch.setenv(k, v)


def test_a_file_where_the_base_has_a_folder_is_refused_at_save(tmp_path: Path) -> None:
    data = write(tmp_path / "data", BASE)
    other = write(tmp_path / "other", {"f": b"f", "dir/x.txt": b"x"})
    with se.Repository.open(str(tmp_path / "repo")) as repo:
        art = se.Artifact("m", type="data")
        art.add_dir(str(data))
        v0 = repo.log_artifact(art, project="p")
        for stage in (
            lambda d: d.add_file(str(other / "f"), name="sub"),  # the base has sub/c.txt
            lambda d: d.add_dir(str(other / "dir"), name="a.txt"),  # the base has the file a.txt
            lambda d: d.add_file(str(other / "f"), name="b.txt/inner"),
        ):
            draft = v0.new_draft()
            stage(draft)
            with pytest.raises(DraftPathConflict, match=r"the draft of p/m \(from v0\) was not logged: '"):
                draft.save()
        assert [v.version for v in repo.artifact_versions("p/m")] == ["v0"]  # nothing committed
        draft = v0.new_draft()  # removing the folder first makes room for the file
        draft.remove("sub")
        draft.add_file(str(other / "f"), name="sub")
        v1 = draft.save()
        assert sorted(v1.manifest.entries) == ["a.txt", "b.txt", "sub"]
        draft = v1.new_draft()  # the other way round: a folder where a file was
        draft.remove("a.txt")
        draft.add_dir(str(other / "dir"), name="a.txt")
        assert sorted(draft.save().manifest.entries) == ["a.txt/x.txt", "b.txt", "sub"]


def test_a_run_logging_a_draft_records_lineage_and_ttl(tmp_path: Path) -> None:
    import datetime as dt

    data = write(tmp_path / "data", BASE)
    extra = write(tmp_path / "extra", {"new.txt": b"new"})
    with se.Repository.open(str(tmp_path / "repo")) as repo:
        art = se.Artifact("m", type="data")
        art.add_dir(str(data))
        v0 = repo.log_artifact(art, project="p")
        with repo.run(project="other", job_type="finetune") as run:  # a run of another project
            base = run.use_artifact("p/m:v0")
            draft = base.new_draft()
            draft.add_file(str(extra / "new.txt"))
            v1 = run.log_artifact(draft, aliases=["tuned"])
        assert (v1.name, v1.version, v1.aliases) == ("p/m", "v1", ["latest", "tuned"])
        producer = v1.logged_by()
        assert producer is not None and (producer.id, producer.project) == (run.id, "other")
        assert [v.version for v in run.logged_artifacts()] == ["v1"]
        assert [r.id for r in v0.used_by()] == [run.id]
        assert v1.record.logged_by == f"other/{run.id}"
        draft = v1.new_draft()
        draft.add_file(str(extra / "new.txt"), name="again.txt")
        v2 = repo.log_artifact(draft, ttl=dt.timedelta(days=3))
        assert v2.record.ttl_seconds == 3 * 86400

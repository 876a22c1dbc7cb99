"""References to external objects (file://, s3://, http://): logged as metadata, fetched and checked."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import syncengine as se
from syncengine import aio
from syncengine.errors import ConfigError, ReferenceChanged, ReferenceNotFound, TooManyObjects
from syncengine.repo.repository import Repository as Core
from syncengine.store.s3 import S3Store
from tests.s3server import S3TestServer

T = Any


@pytest.fixture(autouse=True)
def trust_references(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests' repositories are their own: the user's opt-in (docs/REFERENCES.md "Trust"),
    inherited by the CLI children too."""
    monkeypatch.setenv("SYNCENGINE_TRUST_REFERENCES", "*")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def file_url(p: Path) -> str:
    return "file://" + str(p)


async def entries(v: aio.ArtifactVersion) -> dict[str, Any]:
    return (await v.manifest()).entries


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- file:// ------------------------------------------------------------------------------------


def make_source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"hello")
    (src / "sub" / "big.bin").write_bytes(os.urandom(600_000))  # chunked with the default params
    return src


def test_file_references_file_and_folder(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "stored.txt").write_bytes(b"stored")

    async def go() -> None:
        async with await aio.Repository.open(str(tmp_path / "repo")) as repo:
            art = aio.Artifact("mixed", type="dataset")
            art.add_dir(str(data))
            art.add_reference(file_url(src), name="ext")
            art.add_reference(file_url(src / "a.txt"))  # default name: the basename
            v0 = await repo.log_artifact(art, project="p")
            es = await entries(v0)
            assert sorted(es) == ["a.txt", "ext/a.txt", "ext/sub/big.bin", "stored.txt"]
            assert es["ext/sub/big.bin"].ref == file_url(src / "sub" / "big.bin")
            assert es["ext/sub/big.bin"].size == 600_000 and es["ext/sub/big.bin"].chunks == ()
            assert set(es["a.txt"].extra) == {"mtime_ns", "blake3"}
            assert es["stored.txt"].ref is None
            assert v0.files == 4
            out = Path(await v0.download(tmp_path / "out"))
            assert tree(out) == {
                "a.txt": b"hello",
                "ext/a.txt": b"hello",
                "ext/sub/big.bin": (src / "sub" / "big.bin").read_bytes(),
                "stored.txt": b"stored",
            }
            assert not [p for p in out.rglob(".se-tmp-*")]
            # Logged again unchanged: the same version; touching a checksummed file changes nothing.
            os.utime(src / "a.txt", ns=(1, 1))
            assert (await repo.log_artifact(art, project="p")).version == "v0"
            # New content at the same size: the download refuses it, naming the entry; logging makes v1.
            (src / "a.txt").write_bytes(b"HELLO")
            changed = r"reference '(ext/)?a\.txt' \(file://.*content digest"  # either entry may be first
            with pytest.raises(ReferenceChanged, match=changed):
                await v0.download(tmp_path / "out2")
            assert not (tmp_path / "out2" / "a.txt").exists()
            v1 = await repo.log_artifact(art, project="p")
            assert v1.version == "v1" and v1.digest != v0.digest
            await v1.download(tmp_path / "out3")
            assert (tmp_path / "out3" / "a.txt").read_bytes() == b"HELLO"
            # Deleted source: a clear error.
            (src / "sub" / "big.bin").unlink()
            with pytest.raises(ReferenceChanged, match=r"ext/sub/big\.bin.*no longer exists"):
                await v1.download(tmp_path / "out4")

    run(go())


def test_file_reference_without_checksum_uses_size_and_mtime(tmp_path: Path) -> None:
    src = make_source(tmp_path)

    async def go() -> None:
        async with await aio.Repository.open(str(tmp_path / "repo")) as repo:
            art = aio.Artifact("plain", type="dataset")
            art.add_reference(file_url(src / "a.txt"), name="a.txt", checksum=False)
            v0 = await repo.log_artifact(art, project="p")  # references only: no add_dir needed
            e = (await entries(v0))["a.txt"]
            assert e.extra == {"mtime_ns": (src / "a.txt").stat().st_mtime_ns}
            assert (await repo.log_artifact(art, project="p")).version == "v0"
            await v0.download(tmp_path / "out")
            assert (tmp_path / "out" / "a.txt").read_bytes() == b"hello"
            os.utime(src / "a.txt", ns=(10**18, 10**18))  # only touched: no checksum to tell
            with pytest.raises(ReferenceChanged, match=r"'a\.txt'.*mtime_ns"):
                await v0.download(tmp_path / "out2")
            assert (await repo.log_artifact(art, project="p")).version == "v1"

    run(go())


def test_file_reference_errors(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_bytes(b"file")

    async def go() -> None:
        async with await aio.Repository.open(str(tmp_path / "repo")) as repo:
            art = aio.Artifact("x", type="dataset")
            art.add_reference(file_url(tmp_path / "nope"))
            with pytest.raises(ReferenceNotFound, match="does not exist"):
                await repo.log_artifact(art, project="p")
            art = aio.Artifact("x", type="dataset")
            art.add_reference(file_url(src), max_objects=1)
            with pytest.raises(TooManyObjects, match=r"has 2 objects, more than max_objects=1"):
                await repo.log_artifact(art, project="p")
            art = aio.Artifact("x", type="dataset")
            art.add_dir(str(data))
            art.add_reference(file_url(src / "a.txt"))
            with pytest.raises(ConfigError, match=r"'a\.txt' is both a file and reference"):
                await repo.log_artifact(art, project="p")
            art = aio.Artifact("x", type="dataset")
            art.add_reference(file_url(src / "a.txt"))
            art.add_reference(file_url(src / "a.txt"))
            with pytest.raises(ConfigError, match="given twice"):
                await repo.log_artifact(art, project="p")
            with pytest.raises(ConfigError, match="unsupported scheme"):
                art.add_reference("ftp://host/x")

    run(go())


def test_sync_facade_and_checkout_keep_references(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    with se.Repository.open(str(tmp_path / "repo")) as repo:
        art = se.Artifact("facade", type="dataset")
        art.add_reference(file_url(src), name="ext")
        v = repo.log_artifact(art, project="p")
        root = tmp_path / "co"
        v.checkout(root)
        assert sorted(tree(root)) == ["ext/a.txt", "ext/sub/big.bin"]
        (root / "stray.txt").write_bytes(b"x")
        v.checkout(root)  # checkout removes what the version lacks, not the references
        assert sorted(tree(root)) == ["ext/a.txt", "ext/sub/big.bin"]
        v.verify(root)


# -- http:// ------------------------------------------------------------------------------------


@asynccontextmanager
async def http_server(objects: dict[str, tuple[bytes, str]]) -> AsyncIterator[str]:
    """A real aiohttp server on 127.0.0.1: path → (body, ETag); HEAD and GET."""

    async def handler(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in objects:
            raise web.HTTPNotFound()
        body, etag = objects[name]
        headers = {"ETag": etag, "Last-Modified": "Tue, 01 Dec 2026 12:00:00 GMT"}
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/files/{name}", handler)  # aiohttp answers HEAD from the GET route
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def test_http_references(tmp_path: Path) -> None:
    objects = {"model.bin": (b"weights-v1", '"e1"')}

    async def go() -> None:
        async with http_server(objects) as base, await aio.Repository.open(str(tmp_path / "repo")) as repo:
            art = aio.Artifact("web", type="model")
            art.add_reference(f"{base}/files/model.bin")
            art.add_reference(f"{base}/files/model.bin", name="copies/m.bin")
            v0 = await repo.log_artifact(art, project="p")
            e = (await entries(v0))["model.bin"]
            assert e.size == 10 and e.extra == {
                "etag": '"e1"',
                "last_modified": "Tue, 01 Dec 2026 12:00:00 GMT",
            }
            await v0.download(tmp_path / "out")
            assert tree(tmp_path / "out") == {"model.bin": b"weights-v1", "copies/m.bin": b"weights-v1"}
            assert (await repo.log_artifact(art, project="p")).version == "v0"
            objects["model.bin"] = (b"weights-v2", '"e2"')
            with pytest.raises(ReferenceChanged, match="etag '\"e2\"', logged '\"e1\"'"):
                await v0.download(tmp_path / "out2")
            v1 = await repo.log_artifact(art, project="p")
            assert v1.version == "v1"
            await v1.download(tmp_path / "out3")
            assert (tmp_path / "out3" / "model.bin").read_bytes() == b"weights-v2"
            missing = aio.Artifact("web", type="model")
            missing.add_reference(f"{base}/files/absent.bin")
            with pytest.raises(ReferenceNotFound, match="404"):
                await repo.log_artifact(missing, project="p")

    run(go())


def test_http_references_are_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 503 and a body cut off in the middle are retried; the file is whole in the end."""
    monkeypatch.setenv("SYNCENGINE_S3_BASE_DELAY", "0.01")
    monkeypatch.setenv("SYNCENGINE_S3_MAX_DELAY", "0.05")
    body = os.urandom(300_000)
    calls = {"HEAD": 0, "GET": 0}

    async def handler(request: web.Request) -> web.StreamResponse:
        calls[request.method] += 1
        if calls[request.method] == 1:
            return web.Response(status=503)
        headers = {"ETag": '"b1"', "Content-Length": str(len(body))}
        if request.method == "GET" and calls["GET"] == 2:  # half the body, then the connection drops
            resp = web.StreamResponse(headers=headers)
            await resp.prepare(request)
            await resp.write(body[:100_000])
            assert request.transport is not None
            request.transport.close()
            return resp
        return web.Response(body=body if request.method == "GET" else None, headers=headers)

    async def go() -> None:
        app = web.Application()
        app.router.add_route("*", "/x.bin", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with await aio.Repository.open(str(tmp_path / "repo")) as repo:
                art = aio.Artifact("web", type="model")
                art.add_reference(f"{base}/x.bin")
                v = await repo.log_artifact(art, project="p")
                await v.download(tmp_path / "out")
        finally:
            await runner.cleanup()
        assert (tmp_path / "out" / "x.bin").read_bytes() == body
        assert calls == {"HEAD": 2, "GET": 3}
        assert not list((tmp_path / "out").glob(".se-tmp-*"))

    run(go())


# -- s3:// --------------------------------------------------------------------------------------


def s3_store(server: S3TestServer, bucket: str, prefix: str = "", page: int = 1000) -> S3Store:
    return S3Store(
        bucket,
        prefix,
        endpoint_url=server.endpoint,
        region=server.region,
        access_key_id=server.access_key,
        secret_access_key=server.secret_key,
        list_page_size=page,
    )


async def open_repo(server: S3TestServer, bucket: str, page: int = 1000) -> aio.Repository:
    """A repository on S3 whose stores (also those of referenced buckets) list `page` keys a request."""
    return aio.Repository(await Core.open(s3_store(server, bucket, "repo", page)), f"s3://{bucket}/repo")


def enable_versioning(server: S3TestServer, bucket: str) -> None:
    body = (
        b'<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<Status>Enabled</Status></VersioningConfiguration>"
    )
    status, answer = server.request("PUT", f"/{bucket}?versioning=", body)
    assert status == 200, answer


async def with_source(server: S3TestServer, bucket: str, job: Callable[[S3Store], Awaitable[None]]) -> None:
    async with s3_store(server, bucket) as store:
        await job(store)


def test_s3_key_and_prefix_over_several_list_pages(
    s3_server: S3TestServer, s3_bucket: str, tmp_path: Path
) -> None:
    src = s3_server.new_bucket("src")  # another bucket than the repository's, same endpoint and keys
    keys = [f"images/{i:02d}.png" for i in range(13)]

    async def go() -> None:
        async with s3_store(s3_server, src) as source:
            for k in keys:
                await source.put(k, k.encode() * 3)
            assert s3_server.request("PUT", f"/{src}/images/")[0] == 200  # a "folder" marker: no file
            await source.put("labels.csv", b"a,b\n")
            repo = await open_repo(s3_server, s3_bucket, page=5)  # 14 keys: three pages
            async with repo:
                art = aio.Artifact("imgs", type="dataset")
                art.add_reference(f"s3://{src}/images/", name="train")
                art.add_reference(f"s3://{src}/labels.csv")
                v0 = await repo.log_artifact(art, project="p")
                es = await entries(v0)
                assert sorted(es) == ["labels.csv", *(f"train/{k[len('images/') :]}" for k in keys)]
                e = es["train/00.png"]
                assert e.ref == f"s3://{src}/images/00.png" and e.size == 3 * len(keys[0])
                assert set(e.extra) == {"etag"}  # no versioning on this bucket: no version id
                await v0.download(tmp_path / "out")
                got = tree(tmp_path / "out")
                assert got["labels.csv"] == b"a,b\n" and got["train/12.png"] == keys[12].encode() * 3
                assert len(got) == 14
                assert (await repo.log_artifact(art, project="p")).version == "v0"
                # Without the trailing slash, a key that does not exist is taken as a prefix.
                same = aio.Artifact("imgs", type="dataset")
                same.add_reference(f"s3://{src}/images", name="train")
                same.add_reference(f"s3://{src}/labels.csv")
                assert (await repo.log_artifact(same, project="p")).version == "v0"
                await source.put("images/05.png", b"changed")
                with pytest.raises(ReferenceChanged, match=r"reference 'train/05.png' .*ETag"):
                    await v0.download(tmp_path / "out2")
                v1 = await repo.log_artifact(art, project="p")
                assert v1.version == "v1"
                assert (await entries(v1))["train/05.png"].size == 7

                few = aio.Artifact("imgs", type="dataset")
                few.add_reference(f"s3://{src}/images/", max_objects=12)
                with pytest.raises(TooManyObjects, match=r"has 13 objects, more than max_objects=12"):
                    await repo.log_artifact(few, project="p")
                none = aio.Artifact("imgs", type="dataset")
                none.add_reference(f"s3://{src}/nothing-here")
                with pytest.raises(ReferenceNotFound, match="no such object, and no objects under"):
                    await repo.log_artifact(none, project="p")

    run(go())


def test_s3_versioned_bucket_downloads_the_logged_version(
    s3_server: S3TestServer, s3_bucket: str, tmp_path: Path
) -> None:
    src = s3_server.new_bucket("ver")
    enable_versioning(s3_server, src)

    async def go() -> None:
        async with s3_store(s3_server, src) as source, await open_repo(s3_server, s3_bucket, page=2) as repo:
            await source.put("model/w.bin", b"first")
            await source.put("model/cfg.json", b"{}")
            await source.put("model/extra.txt", b"x")
            art = aio.Artifact("m", type="model")
            art.add_reference(f"s3://{src}/model/")
            v0 = await repo.log_artifact(art, project="p")
            old = (await entries(v0))["w.bin"].extra["versionID"]  # W&B's key name
            assert all("versionID" in e.extra for e in (await entries(v0)).values())
            await source.put("model/w.bin", b"second!")  # a new version; the old one stays
            await v0.download(tmp_path / "out")
            assert (tmp_path / "out" / "w.bin").read_bytes() == b"first"  # GET with the logged VersionId
            v1 = await repo.log_artifact(art, project="p")
            assert v1.version == "v1" and (await entries(v1))["w.bin"].extra["versionID"] != old
            status, _ = s3_server.request("DELETE", f"/{src}/model/w.bin?versionId={old}")
            assert status in (200, 204)
            with pytest.raises(ReferenceChanged, match=f"'w.bin'.*version {old} no longer exists"):
                await v0.download(tmp_path / "out2")
            await v1.download(tmp_path / "out3")
            assert (tmp_path / "out3" / "w.bin").read_bytes() == b"second!"

    run(go())


# -- the CLI ------------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncengine", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ,
    )


def test_cli_put_reference_show_files_and_get(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.txt").write_bytes(b"x")
    repo = str(tmp_path / "repo")
    r = cli(
        "put",
        str(data),
        "-n",
        "p/refs",
        "-t",
        "dataset",
        "--reference",
        f"ext={file_url(src)}",
        "--repo",
        repo,
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["files"] == 3
    r = cli(
        "put",
        str(data),
        "-n",
        "p/refs",
        "-t",
        "dataset",
        "--reference",
        f"ext={file_url(src)}",
        "--repo",
        repo,
        "--json",
    )
    assert r.returncode == 0 and json.loads(r.stdout)["created_now"] is False
    r = cli("show", "p/refs", "--files", "--repo", repo)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"ext/a.txt  5 B  -> {file_url(src / 'a.txt')}",
        f"ext/sub/big.bin  585.94 KiB  -> {file_url(src / 'sub' / 'big.bin')}",
        "x.txt  1 B",
    ]
    shown = json.loads(cli("show", "p/refs", "--files", "--json", "--repo", repo).stdout)
    assert shown["files"][0]["ref"] == file_url(src / "a.txt") and "blake3" in shown["files"][0]["extra"]
    r = cli("get", "p/refs", "--root", str(tmp_path / "out"), "--repo", repo, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["written"] == 3
    assert (tmp_path / "out" / "ext" / "a.txt").read_bytes() == b"hello"
    (src / "a.txt").write_bytes(b"HELLO")
    r = cli("get", "p/refs", "--root", str(tmp_path / "out2"), "--repo", repo)
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and "ext/a.txt" in r.stderr and "changed since" in r.stderr
    r = cli("put", "-n", "p/only", "-t", "dataset", "--reference", "gs://b/x", "--repo", repo)
    assert r.returncode == 2 and "unsupported scheme" in r.stderr
    r = cli("put", "-n", "p/only", "-t", "dataset", "--repo", repo)
    assert r.returncode == 2 and "--reference" in r.stderr
    r = cli(
        "put",
        "-n",
        "p/only",
        "-t",
        "dataset",
        "--no-checksum",
        "--reference",
        file_url(src / "a.txt"),
        "--repo",
        repo,
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["files"] == 1


def test_cli_s3_reference_with_a_local_repository(s3_server: S3TestServer, tmp_path: Path) -> None:
    """A local repository takes S3 settings for references from the AWS environment."""
    src = s3_server.new_bucket("cli")
    assert s3_server.request("PUT", f"/{src}/w/model.bin", b"weights")[0] == 200
    env = {
        **os.environ,
        **s3_server.env(),
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    repo = str(tmp_path / "repo")

    def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "syncengine", *args], capture_output=True, text=True, timeout=300, env=env
        )

    r = run_cli("put", "-n", "p/m", "-t", "model", "--reference", f"s3://{src}/w/", "--repo", repo, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["files"] == 1
    r = run_cli("show", "p/m", "--files", "--repo", repo)
    assert r.stdout.strip() == f"model.bin  7 B  -> s3://{src}/w/model.bin"
    r = run_cli("get", "p/m", "--root", str(tmp_path / "out"), "--repo", repo)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "model.bin").read_bytes() == b"weights"
    r = run_cli(
        "put",
        "-n",
        "p/m",
        "-t",
        "model",
        "--reference",
        f"s3://{src}/w/",
        "--max-objects",
        "1",
        "--repo",
        repo,
    )
    assert r.returncode == 0, r.stderr
    assert "unchanged" in r.stdout

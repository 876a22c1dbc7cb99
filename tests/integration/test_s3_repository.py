"""Repositories in S3 (real SeaweedFS, never a mock), driven as a user drives them.

- the whole CLI round trip with ``--repo s3://BUCKET/PREFIX``;
- ``kill -9`` in the middle of a large put, through the fault proxy counting the bytes sent:
  the re-run sends only what did not make it (the put journal's adopted packs);
- four processes logging into one artifact at once: distinct consecutive versions, no lost
  alias or metadata update (S3 conditional writes are the only coordination).

The kill test's corpus size is ``SYNCENGINE_KILL_TEST_SIZE`` (default 256M; 1G for the
full-size run). Helpers here are shared with test_s3_faults.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import blake3

from syncengine.repo.records import parse_ref
from syncengine.repo.repository import Repository
from syncengine.settings import env_size
from syncengine.store.s3 import S3Store
from tests.faultproxy import Delay, FaultProxy, RequestRecord
from tests.s3server import S3TestServer

REPO_ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20

# Short retry waits: a test never sleeps seconds on a backoff (the policy's shape is what
# is under test, not its defaults).
FAST_RETRY = {
    "SYNCENGINE_S3_BASE_DELAY": "0.01",
    "SYNCENGINE_S3_MAX_DELAY": "0.2",
    "SYNCENGINE_S3_THROTTLE_DELAY": "0.02",
    "SYNCENGINE_S3_MAX_RETRY_AFTER": "1",
    "SYNCENGINE_S3_DEADLINE": "60",
}


# -- helpers (also used by test_s3_faults.py) ------------------------------------------------


def s3_env(server: S3TestServer, **extra: str) -> dict[str, str]:
    """The environment of a CLI run against `server`: its credentials and endpoint, no AWS
    files or instance metadata of this machine, fast retries; the test's private cache and
    state dirs come from os.environ (tests/conftest.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SYNCENGINE_S3_"))}
    env.update(server.env())
    env.update(
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    )
    env.update(FAST_RETRY)
    env.update(extra)
    return env


def direct_store(server: S3TestServer, bucket: str, prefix: str = "") -> S3Store:
    """A store on `server` with explicit settings (independent of this process's environment)."""
    return S3Store(
        bucket,
        prefix,
        endpoint_url=server.endpoint,
        region=server.region,
        access_key_id=server.access_key,
        secret_access_key=server.secret_key,
    )


def cli(*args: str, env: Mapping[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m syncengine ARGS` as a user runs it (stdout/stderr captured, not a TTY)."""
    return subprocess.run(
        [sys.executable, "-m", "syncengine", *args],
        capture_output=True,
        text=True,
        env=dict(env),
        cwd=REPO_ROOT,
        timeout=timeout,
    )


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, f"{r.args[3:]} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return r.stdout


def ok_json(r: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(r))


def write_tree(root: Path, files: Mapping[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def random_bytes(n: int, seed: str) -> bytes:
    """Incompressible, reproducible bytes (BLAKE3's extendable output)."""
    return blake3.blake3(seed.encode()).digest(length=n)


def mixed_corpus(big_sizes: tuple[int, ...] = (3 * MiB + 17, 5 * MiB, 9 * MiB - 5)) -> dict[str, bytes]:
    """Small files in nested directories (text and binary, one empty) plus a few multi-MiB files."""
    files: dict[str, bytes] = {}
    for i in range(120):
        d = f"shard-{i % 6}/part-{i % 4}"
        if i % 3:
            files[f"{d}/rec-{i:03d}.bin"] = random_bytes(100 + 97 * i, f"small {i}")
        else:
            files[f"{d}/rec-{i:03d}.csv"] = f"id,value\n{i},{i * i}\n".encode() * (1 + i % 50)
    files["empty.txt"] = b""
    files["README.md"] = b"# a dataset\n"
    for j, size in enumerate(big_sizes):
        files[f"weights/layer-{j}.bin"] = random_bytes(size, f"big {j}")
    return files


# -- 1. the CLI round trip ------------------------------------------------------------------


def test_cli_round_trip_on_s3(tmp_path: Path, s3_server: S3TestServer, s3_bucket: str) -> None:
    repo = f"s3://{s3_bucket}/team/datasets"
    env = s3_env(s3_server)
    # The endpoint comes from AWS_ENDPOINT_URL for some commands and --endpoint-url for others.
    env_no_endpoint = {k: v for k, v in env.items() if k != "AWS_ENDPOINT_URL"}
    flag = ["--repo", repo, "--endpoint-url", s3_server.endpoint]
    via_env = ["--repo", repo]

    data = tmp_path / "data"
    v0_files = mixed_corpus()
    write_tree(data, v0_files)
    total = sum(map(len, v0_files.values()))

    def run(*args: str, use_flag: bool = False) -> subprocess.CompletedProcess[str]:
        return cli(*args, *(flag if use_flag else via_env), env=env_no_endpoint if use_flag else env)

    # v0, with an alias and metadata
    meta = '{"rows": 3}'
    put0 = ok_json(
        run("put", str(data), "-n", "vision/mnist", "-t", "dataset", "-a", "first", "-m", meta, "--json")
    )
    assert (put0["version"], put0["created_now"]) == (0, True)
    assert (put0["files"], put0["size"]) == (len(v0_files), total)
    assert put0["new_bytes"] == total and put0["packs"] >= 1 and put0["repo"] == repo

    # identical content: the same version, nothing sent
    again = ok_json(run("put", str(data), "-n", "vision/mnist", "-t", "dataset", "--json", use_flag=True))
    assert (again["version"], again["created_now"], again["new_bytes"], again["packs"]) == (0, False, 0, 0)
    text = ok(run("put", str(data), "-n", "vision/mnist", "-t", "dataset"))
    assert "unchanged, same content as vision/mnist:v0" in text and f"repository: {repo}" in text

    # modify: one MiB rewritten inside a big file, one small file removed, one added
    big = bytearray(v0_files["weights/layer-1.bin"])
    big[2 * MiB : 3 * MiB] = random_bytes(MiB, "edit")
    v1_files = dict(v0_files)
    v1_files["weights/layer-1.bin"] = bytes(big)
    del v1_files["shard-1/part-1/rec-001.bin"]
    v1_files["new/notes.txt"] = b"added in v1\n"
    (data / "shard-1/part-1/rec-001.bin").unlink()
    write_tree(data, {k: v1_files[k] for k in ("weights/layer-1.bin", "new/notes.txt")})
    put1 = ok_json(run("put", str(data), "-n", "vision/mnist", "-t", "dataset", "--json"))
    assert (put1["version"], put1["created_now"], put1["files"]) == (1, True, len(v1_files))
    # dedup against v0 on S3: only the chunks around the edit (CDC, ~1 MiB chunks) and the new file
    assert 0 < put1["new_bytes"] < 4 * MiB + 100

    versions = ok_json(run("versions", "vision/mnist", "--json", use_flag=True))
    assert [(v["version"], v["aliases"]) for v in versions] == [(0, ["first"]), (1, ["latest"])]
    assert versions[0]["metadata"] == {"rows": 3}
    assert "v0 " in ok(run("versions", "vision/mnist"))

    shown = json.loads(ok(run("show", "vision/mnist:latest")))
    assert (shown["version"], shown["files"], shown["ref"]) == (1, len(v1_files), "vision/mnist:v1")

    changes = ok_json(run("diff", "vision/mnist:v0", "vision/mnist:v1", "--json"))
    assert {(c["path"], c["change"]) for c in changes} == {
        ("new/notes.txt", "added"),
        ("shard-1/part-1/rec-001.bin", "removed"),
        ("weights/layer-1.bin", "modified"),
    }
    assert sorted(ok(run("diff", "vision/mnist:v0", "vision/mnist:v1")).splitlines()) == [
        "+ new/notes.txt",
        "- shard-1/part-1/rec-001.bin",
        "M weights/layer-1.bin",
    ]

    # aliases move atomically; tags and metadata edits are compare-and-swap
    ok(run("alias", "add", "vision/mnist:v0", "best", "prod", use_flag=True))
    ok(run("alias", "add", "vision/mnist:v1", "best"))
    ok(run("alias", "rm", "vision/mnist:v0", "prod"))
    versions = ok_json(run("versions", "vision/mnist", "--json"))
    assert [v["aliases"] for v in versions] == [["first"], ["best", "latest"]]
    assert "reviewed" in ok(run("tag", "add", "vision/mnist:best", "reviewed", "gold"))
    ok(run("tag", "rm", "vision/mnist:v1", "gold", use_flag=True))
    edited = ok_json(run("edit", "vision/mnist:v0", "--set", "owner=alice", "-d", "the first", "--json"))
    assert edited["metadata"] == {"rows": 3, "owner": "alice"} and edited["description"] == "the first"
    shown = json.loads(ok(run("show", "vision/mnist:best")))
    assert (shown["version"], shown["tags"]) == (1, ["reviewed"])

    ls = ok_json(run("ls", "vision", "--json"))
    assert ls == [
        dict(name="vision/mnist", type="dataset", latest=1, aliases={"first": 0, "best": 1, "latest": 1})
    ]
    assert ok(run("ls")).split() == ["vision"]

    # verify: the working folder is v1, not v0
    assert "matches" in ok(run("verify", "vision/mnist:v1", "--root", str(data)))
    r = run("verify", "vision/mnist:v0", "--root", str(data))
    assert r.returncode == 1 and "3 differences" in r.stderr and "Traceback" not in r.stderr

    # get: byte-identical; a second get into the same root writes nothing; --checkout removes extras
    out = tmp_path / "out"
    got = ok_json(run("get", "vision/mnist:first", "--root", str(out), "--json", use_flag=True))
    assert (got["version"], got["written"]) == (0, len(v0_files))
    assert read_tree(out) == v0_files
    assert ok_json(run("get", "vision/mnist:v0", "--root", str(out), "--json"))["written"] == 0
    (out / "stray.tmp").write_bytes(b"not in any version")
    plain = ok_json(run("get", "vision/mnist:v1", "--root", str(out), "--json"))
    assert plain["version"] == 1 and (out / "shard-1/part-1/rec-001.bin").exists()  # kept without --checkout
    ok(run("get", "vision/mnist:v1", "--root", str(out), "--checkout"))
    assert read_tree(out) == v1_files
    assert "matches" in ok(run("verify", "vision/mnist:v1", "--root", str(out)))

    check = ok_json(run("check", "--read-data", "--json", use_flag=True))
    assert check == {"ok": True, "problems": []}
    assert "repository ok" in ok(run("check", "--read-data"))

    # Everything lives under the prefix; nothing else was written into the bucket.
    async def keys() -> list[str]:
        async with direct_store(s3_server, s3_bucket) as store:
            return [i.key async for i in store.list()]

    all_keys = asyncio.run(keys())
    assert all_keys and all(k.startswith("team/datasets/") for k in all_keys), all_keys[:5]
    assert {k.split("/")[2] for k in all_keys} == {"artifacts", "config", "data", "index", "manifests"}


# -- 6. kill -9 in the middle of a large put --------------------------------------------------


def make_large_corpus(root: Path, size: int, file_size: int = 16 * MiB) -> dict[str, str]:
    """`size` bytes of incompressible data in files of `file_size`; name -> BLAKE3 hex.

    16 MiB files make ~32 MiB packs (two files each), the pack size docs/FORMAT.md names.
    """
    root.mkdir(parents=True)
    out = {}
    for i, off in enumerate(range(0, size, file_size)):
        data = random_bytes(min(file_size, size - off), f"large {i}")
        (root / f"shard-{i:03d}.bin").write_bytes(data)
        out[f"shard-{i:03d}.bin"] = blake3.blake3(data).hexdigest()
    return out


def journaled_packs(state_dir: Path) -> set[str]:
    """Pack ids in the put journal (syncengine/repo/put_journal.py), read as another process would."""
    path = state_dir / "puts.sqlite"
    if not path.exists():
        return set()
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return {bytes(row[0]).hex() for row in db.execute("SELECT pack FROM packs")}
    except sqlite3.OperationalError:  # the table is not created yet
        return set()


def completed_packs(records: list[RequestRecord], data_prefix: str) -> set[str]:
    """Packs the server stored according to a proxy log: a whole-object PUT answered 200, or
    a CompleteMultipartUpload (POST ?uploadId) answered 200, on a key under `data_prefix`."""
    done = set()
    for r in records:
        if not r.path.startswith(data_prefix) or r.status != 200:
            continue
        whole_put = r.method == "PUT" and "partNumber=" not in r.query
        if whole_put or (r.method == "POST" and "uploadId=" in r.query):
            done.add(r.path.rsplit("/", 1)[1])
    return done


async def stored_packs(server: S3TestServer, bucket: str, prefix: str) -> dict[str, int]:
    async with direct_store(server, bucket, prefix) as store:
        return {i.key.rsplit("/", 1)[1]: i.size async for i in store.list("data/")}


def test_kill_9_during_a_large_put_then_the_rerun_sends_only_the_rest(
    tmp_path: Path, s3_server: S3TestServer, s3_bucket: str
) -> None:
    size = env_size("SYNCENGINE_KILL_TEST_SIZE", 256 * MiB, minimum=192 * MiB)
    data = tmp_path / "data"
    digests = make_large_corpus(data, size)
    state_dir = Path(os.environ["SYNCENGINE_STATE_DIR"])
    repo = f"s3://{s3_bucket}/big"
    data_prefix = f"/{s3_bucket}/big/data/"
    env = s3_env(s3_server)

    with FaultProxy(s3_server.endpoint) as proxy:
        args = ["put", str(data), "-n", "p/big", "-t", "model", "--repo", repo, "--endpoint-url", proxy.url]
        child = subprocess.Popen(
            [sys.executable, "-m", "syncengine", *args, "--json"],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 300
        hold = None

        def held(log: list[RequestRecord]) -> list[RequestRecord]:
            return [r for r in log if r.path.startswith(data_prefix) and r.status is None]

        def settled(log: list[RequestRecord]) -> bool:
            """Every pack request was answered, or is held by the proxy before reaching the server."""
            return all(
                r.status is not None or (r.fault is not None and r.bytes_up == 0)
                for r in log
                if r.path.startswith(data_prefix)
            )

        while True:
            assert child.poll() is None, f"the put ended before it was killed: {child.communicate()}"
            journaled = journaled_packs(state_dir)
            completed = completed_packs(proxy.requests, data_prefix)
            if hold is None and len(completed) >= 3:
                # Three packs are stored. From now on the proxy holds every new pack request
                # (the client sees them in flight), and the kill waits until the uploads the
                # server already received are answered: then the packs "completed before the
                # kill" are a fixed set, on any machine speed. Packs are journaled before they
                # are sent, so the journal holds those and the held ones.
                hold = proxy.add_rule(Delay(120.0), path=r"/data/")
            if hold is not None and completed <= journaled and settled(proxy.requests):
                time.sleep(0.05)
                log = proxy.requests
                now = journaled_packs(state_dir)
                # (held: the put is waiting for a pack upload when it dies)
                if settled(log) and completed_packs(log, data_prefix) == completed <= now and held(log):
                    journaled = now
                    break
            assert time.monotonic() < deadline, f"no progress: {proxy.stats}"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
        child.communicate()
        in_flight = held(proxy.requests)
        stored = asyncio.run(stored_packs(s3_server, s3_bucket, "big"))
        assert set(stored) == completed <= journaled  # nothing stored that the journal does not know
        first_run_up = proxy.stats.bytes_up

        # The re-run: the same command, in a fresh process, counting what it sends.
        proxy.remove_rule(hold)
        proxy.reset_stats()
        rerun = ok_json(cli(*args, "--json", env=env, timeout=600))
        resent = proxy.stats.bytes_up
        rerun_puts = [r for r in proxy.requests if r.method == "PUT" and r.path.startswith(data_prefix)]

    completed_bytes = sum(stored.values())
    slack = 2 * MiB  # index segment, manifest pages and record, version record, head
    print(
        f"\nkill -9 test, {size / MiB:.0f} MiB: {len(stored)} packs ({completed_bytes / MiB:.1f} MiB) "
        f"stored and journaled before the kill, {len(in_flight)} pack requests in flight; the first run "
        f"sent {first_run_up / MiB:.1f} MiB; the re-run sent {resent / MiB:.1f} MiB in {rerun['packs']} "
        f"packs (bound: {(size - completed_bytes + slack) / MiB:.1f} MiB)"
    )
    assert rerun["version"] == 0 and rerun["created_now"] and rerun["size"] == size
    assert not {r.path.rsplit("/", 1)[1] for r in rerun_puts} & set(stored)  # adopted, never re-sent
    assert rerun["new_bytes"] <= size - completed_bytes + slack  # adopted blobs are not new either
    assert resent <= size - completed_bytes + slack
    assert journaled_packs(state_dir) == set()  # forgotten once indexed

    check = ok_json(cli("check", "--read-data", "--json", "--repo", repo, env=env, timeout=600))
    assert check == {"ok": True, "problems": []}
    out = tmp_path / "out"
    ok(cli("get", "p/big:v0", "--root", str(out), "--repo", repo, env=env, timeout=600))
    assert {p.name: blake3.blake3(p.read_bytes()).hexdigest() for p in out.iterdir()} == digests


# -- 7. concurrent writers ------------------------------------------------------------------

WRITER = """
import asyncio, os, sys
import msgspec
from pathlib import Path
from syncengine.hashing.tree import Source
from syncengine.repo.repository import Repository
from syncengine.store import open_store

async def main(url, work, me):
    async with open_store(url) as store:
        repo = await Repository.open(store)
        out = []
        for i in range(5):
            d = Path(work) / f"w{me}-{i}"
            d.mkdir(parents=True)
            (d / "f.txt").write_bytes(f"writer {me} log {i}".encode())
            (d / "same.bin").write_bytes(b"shared by every version" * 1000)
            r = await repo.log([Source(str(d))], project="p", name="shared", type="t", aliases=[f"w{me}"])
            out.append(r.record.version)
            await repo.update_version("p", "shared", 0, lambda v: msgspec.structs.replace(
                v, metadata={**v.metadata, f"w{me}-{i}": i}))
            await repo.set_aliases("p", "shared", r.record.version, add=[f"last-{me}"])
    print(" ".join(map(str, out)))

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
"""


def test_concurrent_writers_on_s3_get_distinct_consecutive_versions(
    tmp_path: Path, s3_server: S3TestServer, s3_bucket: str
) -> None:
    url = f"s3://{s3_bucket}/shared"
    # Through the proxy with a little latency (a real S3 round trip is ~20 ms): the writers'
    # read-modify-write windows overlap, and the log shows the conflicts they resolved.
    with FaultProxy(s3_server.endpoint, latency=0.005) as proxy:
        # Four "machines": each its own cache and state dirs; they share only the bucket.
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER, url, str(tmp_path / "work"), str(i)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO_ROOT,
                env=s3_env(
                    s3_server,
                    AWS_ENDPOINT_URL=proxy.url,
                    SYNCENGINE_CACHE_DIR=str(tmp_path / f"cache{i}"),
                    SYNCENGINE_STATE_DIR=str(tmp_path / f"state{i}"),
                ),
            )
            for i in range(4)
        ]
        got: dict[int, list[int]] = {}
        for i, p in enumerate(procs):
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
            got[i] = [int(x) for x in out.split()]
        log = proxy.requests
    conflicts = Counter(r.path.rsplit("/", 1)[1] for r in log if r.status == 412)
    print(f"\n412 answers (lost races, resolved by re-reading): {dict(conflicts)}")
    assert conflicts["head"] > 0  # the writers really raced (compare-and-swap of the head lost, retried)
    assert sorted(v for vs in got.values() for v in vs) == list(range(20))
    for vs in got.values():
        assert vs == sorted(vs)  # one writer's versions are increasing

    async def check() -> None:
        async with direct_store(s3_server, s3_bucket, "shared") as store:
            repo = await Repository.open(store, create=False)
            head = await repo.head("p", "shared")
            assert head.latest == 19
            # every writer's alias moves kept, each pointing at that writer's last version
            assert {a: v for a, v in head.aliases.items() if a.startswith("w")} == {
                f"w{i}": got[i][-1] for i in range(4)
            }
            assert {a: v for a, v in head.aliases.items() if a.startswith("last-")} == {
                f"last-{i}": got[i][-1] for i in range(4)
            }
            assert len(head.digests) == 20 and sorted(head.digests.values()) == list(range(20))
            records = await repo.versions("p", "shared")
            assert [r.version for r in records] == list(range(20))
            assert len({r.content_digest for r in records}) == 20
            v0 = await repo.version("p", "shared", 0)
            assert v0.metadata == {f"w{i}-{j}": j for i in range(4) for j in range(5)}  # no update lost
            assert (await repo.resolve(parse_ref("p/shared"))).version == 19
            assert await repo.check(read_data=True) == []

    asyncio.run(check())

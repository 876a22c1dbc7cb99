"""An S3 repository behind a faulty network (tests/faultproxy.py in front of real SeaweedFS).

- ~10 % of all requests faulted (resets in every phase, 500, 503 SlowDown with Retry-After,
  truncated answers): put, get and check still succeed, byte-identical;
- a stalled request (no byte moves) is abandoned after SYNCENGINE_S3_STALL_TIMEOUT and retried;
- a wrong secret fails at once: one line, exit 1, one request, no retry storm;
- no secret key or session token ever appears in the output, DEBUG logging included.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from tests.faultproxy import FaultProxy, RequestRecord, Reset, Respond, Stall, Truncate
from tests.integration.test_s3_repository import (
    FAST_RETRY,
    REPO_ROOT,
    MiB,
    cli,
    mixed_corpus,
    ok,
    ok_json,
    random_bytes,
    read_tree,
    s3_env,
    write_tree,
)
from tests.s3server import S3TestServer

CLEAN = {"ok": True, "problems": []}  # `check --json` of a healthy repository


def retried(log: list[RequestRecord], method: str, path_part: str) -> list[RequestRecord]:
    """The requests of `method` on the first path containing `path_part` (all attempts)."""
    paths = [r.path for r in log if r.method == method and path_part in r.path]
    assert paths, f"no {method} of a path containing {path_part!r}"
    return [r for r in log if r.method == method and r.path == paths[0]]


# -- 2. random faults ---------------------------------------------------------------------


def test_put_get_check_survive_ten_percent_faulted_requests(
    tmp_path: Path, s3_server: S3TestServer, s3_bucket: str
) -> None:
    repo = f"s3://{s3_bucket}/flaky"
    # 5 MiB parts from 5 MiB on: packs go multipart, so parts, completions and their retries
    # are exercised too (and there are more requests to fault).
    env = s3_env(s3_server, SYNCENGINE_MULTIPART_THRESHOLD="5M", SYNCENGINE_PART_SIZE="5M")
    data = tmp_path / "data"
    v0 = mixed_corpus()
    write_tree(data, v0)
    v1 = {**v0, "weights/layer-0.bin": random_bytes(4 * MiB, "v1 weights"), "v1.txt": b"v1"}

    with FaultProxy(s3_server.endpoint) as proxy:
        # A few faults at places that must be survived on every run (the random ones land
        # wherever the request order puts them): a part upload cut mid-body, a lost answer to
        # the multipart completion, a SlowDown on the version record's create-if-absent, a
        # pack read cut short.
        targeted = [
            proxy.add_rule(Reset("request", after=MiB), method="PUT", query="partNumber", nth=2),
            proxy.add_rule(Reset("before_response"), method="POST", path="/data/", query="uploadId", nth=1),
            proxy.add_rule(Respond(503, retry_after=0), method="PUT", path="/versions/v0$", nth=1),
            proxy.add_rule(Truncate(), method="GET", path="/data/", nth=1),
        ]
        # ~10 % of all requests, the default mix: resets (3 phases), 500, 503 SlowDown with
        # Retry-After, truncated answers.
        proxy.random_faults(0.1, seed=7)
        where = ["--repo", repo, "--endpoint-url", proxy.url]
        put0 = ok_json(
            cli("put", str(data), "-n", "p/flaky", "-t", "dataset", "-a", "best", *where, "--json", env=env)
        )
        assert (put0["version"], put0["created_now"]) == (0, True)
        write_tree(data, v1)
        put1 = ok_json(cli("put", str(data), "-n", "p/flaky", "-t", "dataset", *where, "--json", env=env))
        assert (put1["version"], put1["created_now"]) == (1, True)
        again = ok_json(cli("put", str(data), "-n", "p/flaky", "-t", "dataset", *where, "--json", env=env))
        assert (again["version"], again["created_now"], again["new_bytes"]) == (1, False, 0)
        ok(cli("alias", "add", "p/flaky:v1", "prod", *where, env=env))
        ok(cli("tag", "add", "p/flaky:v0", "old", *where, env=env))

        out0, out1 = tmp_path / "out0", tmp_path / "out1"
        ok(cli("get", "p/flaky:best", "--root", str(out0), *where, env=env))
        ok(cli("get", "p/flaky:prod", "--root", str(out1), *where, env=env))
        assert read_tree(out0) == v0
        assert read_tree(out1) == v1
        assert "matches" in ok(cli("verify", "p/flaky:v1", "--root", str(out1), *where, env=env))
        assert ok_json(cli("check", "--read-data", "--json", *where, env=env)) == CLEAN
        versions = ok_json(cli("versions", "p/flaky", "--json", *where, env=env))
        assert [(v["version"], v["aliases"], v.get("tags", [])) for v in versions] == [
            (0, ["best"], ["old"]),
            (1, ["latest", "prod"], []),
        ]
        stats, log = proxy.stats, proxy.requests

    faults = sum(stats.faults.values())
    print(f"\n{stats.requests} requests, {faults} faulted: {dict(stats.faults)}")
    assert stats.faults, "no fault was injected"
    assert [rule.fired for rule in targeted] == [1, 1, 1, 1]
    # The random rule draws from its own seeded RNG once per request, so how many of the
    # first N requests it faults does not depend on their order: about 10 %, several kinds.
    assert faults >= 0.04 * stats.requests
    assert len(stats.faults) >= 4
    assert any(r.fault is not None and "/data/" in r.path for r in log)

    # The store behind the proxy is clean as well (read without any fault in between).
    direct = ["--repo", repo, "--endpoint-url", s3_server.endpoint]
    assert ok_json(cli("check", "--read-data", "--json", *direct, env=env)) == CLEAN
    # Multipart uploads left behind: only those whose CreateMultipartUpload reached the server
    # but whose answer was lost (the store cannot learn that upload id; `abort-uploads` is
    # the cleanup for them). Every other upload was completed or aborted.
    left = ok_json(cli("abort-uploads", "--older-than", "0s", "--dry-run", "--json", *direct, env=env))
    lost_creates = [
        r for r in log if r.method == "POST" and "uploads" in parse_qs(r.query, keep_blank_values=True)
        and r.status != 200
        and not isinstance(r.fault, Respond)
    ]  # fmt: skip
    assert len(left["uploads"]) <= len(lost_creates)
    assert all(u["key"].startswith("data/") for u in left["uploads"])


# -- 3. stalls ------------------------------------------------------------------------------


def test_a_stalled_request_is_abandoned_and_retried(
    tmp_path: Path, s3_server: S3TestServer, s3_bucket: str
) -> None:
    repo = f"s3://{s3_bucket}/stalls"
    env = s3_env(s3_server, SYNCENGINE_S3_STALL_TIMEOUT="1.5")
    data = tmp_path / "data"
    files = mixed_corpus((6 * MiB,))
    write_tree(data, files)

    with FaultProxy(s3_server.endpoint) as proxy:
        where = ["--repo", repo, "--endpoint-url", proxy.url]
        # The stalls last far longer than the whole test: only the client's stall timeout can
        # end them. (Were it not detected, the command would hang until its own timeout.)
        # (a) a pack upload stops moving after 1 MiB of its body;
        proxy.add_rule(Stall(600, phase="request", after=MiB), method="PUT", path="/data/", nth=1)
        # (b) the server stores the version record, but its answer never comes (the retry finds
        #     its own record: the conditional create must still succeed, as v0);
        proxy.add_rule(Stall(600, phase="before_response"), method="PUT", path="/versions/v0$", nth=1)
        put = ok_json(
            cli("put", str(data), "-n", "p/s", "-t", "dataset", *where, "--json", env=env, timeout=120)
        )
        assert (put["version"], put["created_now"]) == (0, True)

        # (c) a pack download stops after 256 KiB of the answer.
        proxy.add_rule(Stall(600, phase="response", after=256 << 10), method="GET", path="/data/", nth=1)
        out = tmp_path / "out"
        ok(cli("get", "p/s:v0", "--root", str(out), *where, env=env, timeout=120))
        assert read_tree(out) == files
        log = proxy.requests

    # Each stalled request was retried (normally exactly once: [stalled, answered]; on a
    # heavily loaded machine a slow retry may be abandoned as well, hence `retries`).
    def retries(records: list[RequestRecord], final: int) -> bool:
        return records[-1].status == final and all(r.status in (None, final) for r in records[1:])

    pack_put = retried(log, "PUT", "/data/")
    assert isinstance(pack_put[0].fault, Stall) and pack_put[0].status is None
    assert pack_put[0].bytes_up <= MiB + (256 << 10)  # the proxy stopped reading there
    assert len(pack_put) >= 2 and retries(pack_put, 200)  # sent again, stored

    record_put = retried(log, "PUT", "/versions/v0")
    assert isinstance(record_put[0].fault, Stall)
    assert record_put[0].upstream_status == 200 and record_put[0].status is None  # applied, answer lost
    assert len(record_put) >= 2 and retries(record_put, 412)  # the retry found the key taken …
    heads = [r for r in log if r.method == "HEAD" and r.path == record_put[0].path]
    assert heads and heads[-1].status == 200  # … and a HEAD showed it was its own write (v0, above)

    pack_get = retried(log, "GET", "/data/")
    assert isinstance(pack_get[0].fault, Stall) and pack_get[0].status == 206
    assert 0 < pack_get[0].bytes_down <= 512 << 10
    assert len(pack_get) >= 2 and retries(pack_get, 206)  # the range asked for again

    assert ok_json(cli("check", "--read-data", "--json", "--repo", repo, env=env)) == CLEAN


# -- 4. a wrong secret -----------------------------------------------------------------------

WRONG_SECRET = "wrong-Secret-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLE-session-token-5c4b3a2918f7e6d5c4b3a291"


@pytest.mark.parametrize(
    "cmd",
    [
        ["put", "{data}", "-n", "p/x", "-t", "dataset"],
        ["get", "p/x", "--root", "{out}"],
        ["ls", "--json"],
    ],
    ids=["put", "get", "ls"],
)
def test_a_wrong_secret_fails_at_once_with_one_line_and_one_request(
    tmp_path: Path, s3_server: S3TestServer, s3_bucket: str, cmd: list[str]
) -> None:
    data = tmp_path / "data"
    write_tree(data, {"a.txt": b"a"})
    args = [a.format(data=data, out=tmp_path / "out") for a in cmd]
    # The default retry policy (10 attempts, seconds of backoff): a retried 403 would show.
    env = s3_env(s3_server, AWS_SECRET_ACCESS_KEY=WRONG_SECRET)
    for var in FAST_RETRY:
        env.pop(var)
    with FaultProxy(s3_server.endpoint) as proxy:
        r = cli(*args, "--repo", f"s3://{s3_bucket}/repo", "--endpoint-url", proxy.url, env=env, timeout=60)
        log = proxy.requests
    assert r.returncode == 1
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    assert "SignatureDoesNotMatch" in lines[0] and "secret access key" in lines[0]
    assert f"'{s3_server.access_key}'" in lines[0]  # names the key id to check (not a secret)
    assert WRONG_SECRET not in r.stderr
    # Observed: one request per path, none retried. The first thing any command does is GET
    # <prefix>/config; the 403 SignatureDoesNotMatch answer is not retryable, the store raises
    # StoreAccessDenied, and the CLI prints it and exits. `put` first tries the no-change
    # read path (syncengine/store/s3_quick.py), whose one 403 sends it to the full path.
    expected = [("GET", f"/{s3_bucket}/repo/config", 403)] * (2 if args[0] == "put" else 1)
    assert [(q.method, q.path, q.status) for q in log] == expected


# -- 5. credentials never appear in the output --------------------------------------------

# The CLI under Python's root logger at DEBUG: every record of botocore, aiohttp, asyncio and
# syncengine goes to stderr.
DEBUG_CLI = (
    "import logging, sys; logging.basicConfig(level=logging.DEBUG, stream=sys.stderr); "
    "logging.getLogger('test').debug('logging on'); "
    "from syncengine.cli.main import main; main(sys.argv[1:])"
)


def run_cli(args: list[str], env: dict[str, str], *, debug: bool) -> subprocess.CompletedProcess[str]:
    prefix = ["-c", DEBUG_CLI] if debug else ["-m", "syncengine"]
    return subprocess.run(
        [sys.executable, *prefix, *args], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120
    )


def test_credentials_never_appear_in_any_output(
    tmp_path: Path, s3_server: S3TestServer, s3_bucket: str
) -> None:
    data = tmp_path / "data"
    write_tree(data, {"a.txt": b"alpha", "big.bin": random_bytes(2 * MiB, "leak")})
    repo = ["--repo", f"s3://{s3_bucket}/leak", "--endpoint-url", s3_server.endpoint]
    put = ["put", str(data), "-n", "p/leak", "-t", "dataset"]
    # (arguments, with DEBUG logging?)
    working = [
        ([*put, "--json"], True),
        (put, False),
        (["get", "p/leak", "--root", str(tmp_path / "out"), "--json"], True),
        (["get", "p/leak", "--root", str(tmp_path / "out2")], False),
        (["ls", "--json"], True),
        (["ls", "p"], False),
        (["versions", "p/leak", "--json"], True),
        (["check", "--read-data"], True),
    ]
    # Failing runs stop at the first request (GET config): one put, get and ls each is enough.
    failing = [
        ([*put, "--json"], True),
        (["get", "p/leak", "--root", str(tmp_path / "o3")], False),
        (["ls"], True),
    ]
    cases = [
        ("good secret", {}, working),
        ("wrong secret", {"AWS_SECRET_ACCESS_KEY": WRONG_SECRET}, failing),
        (
            "wrong secret + token",
            {"AWS_SECRET_ACCESS_KEY": WRONG_SECRET, "AWS_SESSION_TOKEN": SESSION_TOKEN},
            failing,
        ),
        # SeaweedFS with static identities refuses any session token (InvalidAccessKeyId), so
        # the right secret with a token runs the error path too.
        ("good secret + session token", {"AWS_SESSION_TOKEN": SESSION_TOKEN}, failing),
        # Credentials of a profile in a shared credentials file: botocore's chain resolves
        # them (and logs at DEBUG); environment credentials are used without botocore.
        ("wrong secret, profile", {"profile_secret": WRONG_SECRET}, failing),
    ]
    secrets = [s3_server.secret_key, WRONG_SECRET, SESSION_TOKEN]

    def run_case(name: str, extra: dict[str, str], runs: list[tuple[list[str], bool]]) -> int:
        profile_secret = extra.pop("profile_secret", None)
        env = s3_env(s3_server, **extra)
        if profile_secret is not None:
            creds = tmp_path / "credentials"
            creds.write_text(
                f"[leak]\naws_access_key_id = {env.pop('AWS_ACCESS_KEY_ID')}\n"
                f"aws_secret_access_key = {profile_secret}\n"
            )
            env.pop("AWS_SECRET_ACCESS_KEY")
            env.update(AWS_PROFILE="leak", AWS_SHARED_CREDENTIALS_FILE=str(creds))
        for args, debug in runs:
            r = run_cli([*args, *repo], env, debug=debug)
            assert (r.returncode == 0) == (runs is working), (name, args, r.stderr[-2000:])
            if r.returncode:
                assert r.stderr.splitlines()[-1].startswith("error: "), r.stderr[-2000:]
                assert "Traceback" not in r.stderr
            if debug:
                assert "DEBUG:test:logging on" in r.stderr  # the logging really was on
                if profile_secret is not None:
                    assert "DEBUG:botocore" in r.stderr  # and botocore resolved the profile
            for s in secrets:
                for stream, text in (("stdout", r.stdout), ("stderr", r.stderr)):
                    assert s not in text, (name, args, stream)
                    assert s[-16:] not in text, (name, args, stream)  # nor a recognisable piece of it
        return len(runs)

    # The good-secret runs in order (put before get); the failing cases beside them.
    with ThreadPoolExecutor(2) as pool:
        counts = list(pool.map(lambda c: run_case(*c), cases))
    assert counts == [len(working), *[len(failing)] * (len(cases) - 1)]

"""References in a repository others can write (issue 15 items 4 and 9, docs/REFERENCES.md
"Trust" and "URLs that carry credentials"): a planted reference must not make `get` copy
without end, hang, or fetch anything unless the user trusts the repository for references;
URLs carrying credentials are refused at log time and never printed in full.

Each `get` runs as a child with RLIMIT_FSIZE, so a reference copied without end fails the
test (SIGXFSZ) instead of filling the disk; subprocess timeouts are failure deadlines only.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from syncengine import aio
from syncengine.errors import ConfigError, ReferencesNotTrusted
from syncengine.hashing.tree import Source
from syncengine.repo import repository as repository_mod
from syncengine.repo.manifest import ManifestEntry
from syncengine.repo.references import Reference, masked_uri, reference_entry, secrets_in
from syncengine.repo.repository import Repository
from syncengine.store.local import LocalStore

TRUST = "SYNCENGINE_TRUST_REFERENCES"
#: A child may write no file larger than this: a copy without end dies instead of filling the disk.
FILE_LIMIT = 32 << 20


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, deadline: float = 120
) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `syncengine ARGS` in a child whose files are capped;
    ``env`` on top of this process's environment, less any trust in references it holds."""
    environ = {k: v for k, v in os.environ.items() if k != TRUST}
    p = subprocess.run(
        [sys.executable, "-m", "syncengine", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=deadline,
        env={**environ, **(env or {})},
        preexec_fn=_limit_file_size,
    )
    return p.returncode, p.stdout, p.stderr


def plant(repo_dir: Path, entries: list[ManifestEntry], stored: Path | None = None) -> None:
    """Logs version p/d:v0 holding ``entries`` as references (and the files of ``stored``),
    as anyone who can write the repository can: the log path with its resolver replaced."""

    async def forged(refs: object, store: object, params: object) -> list[ManifestEntry]:
        return sorted(entries, key=lambda e: e.path.encode())

    async def go() -> None:
        repo = await Repository.open(LocalStore(repo_dir))
        try:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(repository_mod, "resolve_references", forged)
                await repo.log(
                    [Source(str(stored))] if stored is not None else [],
                    project="p",
                    name="d",
                    type="dataset",
                    references=[Reference.parse("file:///placeholder")],
                    stat_cache=False,
                )
        finally:
            await repo.store.close()

    asyncio.run(go())


def special_entry(path: str, source: str) -> ManifestEntry:
    """A reference to ``source`` (a device, a FIFO) with the size and mtime a stat gives, so
    the metadata checks pass and only reading it is left."""
    st = os.stat(source)
    return reference_entry(path, "file://" + source, st.st_size, {"mtime_ns": st.st_mtime_ns})


# -- item 4: bounded reads ---------------------------------------------------------------------


def test_a_reference_to_dev_zero_is_refused_not_copied_without_end(tmp_path: Path) -> None:
    plant(tmp_path / "repo", [special_entry("zero.bin", "/dev/zero")])
    rc, _, err = cli("get", "p/d", "--root", "out", "--repo", "repo", "--trust-references", cwd=tmp_path)
    assert rc == 1, (rc, err)
    assert "/dev/zero is no regular file" in err and "zero.bin" in err
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_a_reference_to_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    plant(tmp_path / "repo", [special_entry("pipe.bin", str(fifo))])
    rc, _, err = cli(
        "get", "p/d", "--root", "out", "--repo", "repo", "--trust-references", cwd=tmp_path, deadline=60
    )
    assert rc == 1, (rc, err)
    assert f"{fifo} is no regular file" in err


class _Server:
    """A loopback HTTP server: HEAD answers with ``length``; GET sends ``body_size`` bytes in
    chunked transfer encoding (no Content-Length) and counts what the client took."""

    def __init__(self, length: int, body_size: int) -> None:
        self.length, self.body_size = length, body_size
        self.sent = 0
        self.finished = False
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                server.requests.append(f"HEAD {self.path}")
                self.send_response(200)
                self.send_header("Content-Length", str(server.length))
                self.send_header("ETag", '"e1"')
                self.end_headers()

            def do_GET(self) -> None:
                server.requests.append(f"GET {self.path}")
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("ETag", '"e1"')
                self.end_headers()
                chunk = b"z" * (64 << 10)
                try:
                    while server.sent < server.body_size:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        server.sent += len(chunk)
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                    server.finished = True
                except OSError:
                    self.close_connection = True  # the client hung up: what it should do

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @contextmanager
    def running(self) -> Iterator[_Server]:
        t = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        t.start()
        try:
            yield self
        finally:
            self.httpd.shutdown()
            self.httpd.server_close()
            t.join()


def test_a_chunked_body_longer_than_logged_is_cut_off_at_the_logged_size(tmp_path: Path) -> None:
    """The server logs 10 bytes, then streams 64 MiB without a Content-Length: the download
    stops at the chunk that passes 10 bytes instead of writing it all and comparing at EOF."""
    server = _Server(length=10, body_size=64 << 20)
    with server.running():
        rc, _, err = cli(
            "put",
            "-n",
            "p/w",
            "-t",
            "model",
            "--reference",
            f"{server.base}/w.bin",
            "--repo",
            "repo",
            cwd=tmp_path,
        )
        assert rc == 0, err
        rc, _, err = cli("get", "p/w", "--root", "out", "--repo", "repo", "--trust-references", cwd=tmp_path)
    assert rc == 1, (rc, err)
    assert "more than the logged 10 bytes arrived" in err, err
    assert not server.finished and server.sent < 64 << 20
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


# -- item 4: trust -----------------------------------------------------------------------------


def test_references_are_fetched_only_from_a_repository_the_user_trusts(tmp_path: Path) -> None:
    src = tmp_path / "src.txt"
    src.write_bytes(b"referenced")
    stored = tmp_path / "stored"
    stored.mkdir()
    (stored / "a.txt").write_bytes(b"stored")
    repo = tmp_path / "team" / "repo"
    (tmp_path / "team").mkdir()
    env_none: dict[str, str] = {}
    rc, _, err = cli(
        "put", str(stored), "-n", "p/d", "-t", "t", "--reference", f"r.txt=file://{src}", "--repo", str(repo),
        cwd=tmp_path,
    )  # fmt: skip
    assert rc == 0, err

    rc, _, err = cli("get", "p/d", "--root", "out", "--repo", str(repo), cwd=tmp_path, env=env_none)
    assert rc == 1, err
    assert "'r.txt' is a reference to file://" in err and "--trust-references" in err and TRUST in err
    assert str(repo) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "r.txt").exists() and not (tmp_path / "out" / "a.txt").exists()
    rc, _, err = cli(
        "get", "p/d", "--root", "out", "--repo", str(repo), cwd=tmp_path, env={TRUST: str(tmp_path / "other")}
    )
    assert rc == 1 and "--trust-references" in err
    rc, _, err = cli(
        "verify", "p/d", "--root", "out", "--references", "--repo", str(repo), cwd=tmp_path, env=env_none
    )
    assert rc == 1 and "--trust-references" in err, err

    for i, (flag, env) in enumerate(
        [
            (["--trust-references"], env_none),
            ([], {TRUST: str(repo)}),
            ([], {TRUST: f"s3://elsewhere, {tmp_path / 'team'}/"}),  # a folder above covers it
            ([], {TRUST: "*"}),
        ]
    ):
        rc, _, err = cli("get", "p/d", "--root", f"ok{i}", "--repo", str(repo), *flag, cwd=tmp_path, env=env)
        assert rc == 0, (flag, env, err)
        assert (tmp_path / f"ok{i}" / "r.txt").read_bytes() == b"referenced"
    rc, out, err = cli(
        "verify",
        "p/d",
        "--root",
        "ok0",
        "--references",
        "--trust-references",
        "--repo",
        str(repo),
        cwd=tmp_path,
    )
    assert rc == 0, (out, err)

    async def api() -> None:
        async with await aio.Repository.open(str(repo)) as r:
            v = await r.artifact("p/d")
            with pytest.raises(ReferencesNotTrusted):
                await v.download(tmp_path / "api0")
            await v.download(tmp_path / "api1", trust_references=True)
            await v.verify(tmp_path / "api1", references=True, trust_references=True)
            with pytest.raises(ReferencesNotTrusted):
                await v.verify(tmp_path / "api1", references=True, trust_references=False)

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(TRUST, raising=False)
        asyncio.run(api())
    assert (tmp_path / "api1" / "r.txt").read_bytes() == b"referenced"


# -- item 9: URLs that carry credentials ---------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "found"),
    [
        ("https://h/f?X-Amz-Signature=abc&X-Amz-Credential=AK", ["X-Amz-Signature", "X-Amz-Credential"]),
        ("https://h/f?token=abc", ["token"]),
        ("https://h/f?access_token=abc", ["access_token"]),
        ("https://acct.blob.core.windows.net/c/f?sv=2020&sig=abc", ["sig"]),
        ("https://h/f?Policy=p&Signature=abc&Key-Pair-Id=k", ["Signature"]),
        ("https://user:pass@h/f", ["user info"]),
        ("https://TOKEN@h/f", ["user info"]),
        ("https://h/f?api_key=1", ["api_key"]),
        ("https://h/f?version=2&name=a", []),
        ("https://h/f", []),
        ("s3://b/key?token=x", []),  # an S3 key may hold '?': no query there
    ],
)
def test_secrets_in_urls(uri: str, found: list[str]) -> None:
    assert secrets_in(uri) == found
    if found:
        with pytest.raises(ConfigError, match="carries a credential") as e:
            Reference.parse(uri)
        assert "abc" not in str(e.value) and "pass@" not in str(e.value)
        assert Reference.parse(uri, allow_secret_url=True).uri == uri
    else:
        Reference.parse(uri)


def test_masked_uri_masks_user_info_and_query_values() -> None:
    assert masked_uri("https://u:p@h:8/a/b?token=abc&v=2#frag") == "https://***@h:8/a/b?token=***&v=***#frag"
    assert masked_uri("http://h/f?flag") == "http://h/f?flag"
    assert masked_uri("s3://b/k?x=1") == "s3://b/k?x=1"
    assert masked_uri("file:///a%3Fb") == "file:///a%3Fb"


def test_secret_urls_are_refused_by_put_and_masked_when_shown(tmp_path: Path) -> None:
    server = _Server(length=10, body_size=10)
    with server.running():
        secret_uri = f"{server.base}/w.bin?X-Amz-Signature=SEKRIT&v=1"
        rc, out, err = cli(
            "put", "-n", "p/s", "-t", "t", "--reference", secret_uri, "--repo", "repo", cwd=tmp_path
        )
        assert rc == 2, (rc, out, err)
        assert "carries a credential (X-Amz-Signature)" in err and "--allow-secret-urls" in err
        assert "SEKRIT" not in err and server.requests == []
        rc, out, err = cli(
            "put", "-n", "p/s", "-t", "t", "--reference", secret_uri, "--allow-secret-urls", "--repo", "repo",
            cwd=tmp_path,
        )  # fmt: skip
        assert rc == 0, err
        rc, out, err = cli("show", "p/s", "--files", "--repo", "repo", cwd=tmp_path)
        assert rc == 0 and "SEKRIT" not in out
        assert out.strip() == f"w.bin  10 B  -> {server.base}/w.bin?X-Amz-Signature=***&v=***"
        rc, out, err = cli("show", "p/s", "--files", "--json", "--repo", "repo", cwd=tmp_path)
        assert "SEKRIT" not in out and json.loads(out)["files"][0]["ref"].endswith(
            "?X-Amz-Signature=***&v=***"
        )
        # The GET sends more than the 10 bytes logged: the error names the URL, masked.
        rc, out, err = cli(
            "get", "p/s", "--root", "out", "--repo", "repo", "--trust-references", cwd=tmp_path
        )
        assert rc == 1 and "w.bin?X-Amz-Signature=***" in err and "SEKRIT" not in err, err

    async def api() -> None:
        async with await aio.Repository.open(str(tmp_path / "repo")) as r:
            v = await r.artifact("p/s")
            assert (await v.manifest()).entries["w.bin"].ref == secret_uri  # the API keeps it as logged

    asyncio.run(api())


def test_a_port_nobody_listens_on_is_a_clear_masked_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a free port, closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, _, err = cli(
        "put", "-n", "p/x", "-t", "t", "--reference", f"http://u:pw@127.0.0.1:{port}/f?token=SEKRIT",
        "--allow-secret-urls", "--repo", "repo", cwd=tmp_path, env={"SYNCENGINE_S3_MAX_ATTEMPTS": "1"},
    )  # fmt: skip
    assert rc == 1, err
    assert "SEKRIT" not in err and ":pw@" not in err and "internal error" not in err, err


def test_file_references_are_read_only_below_the_folders_the_user_allows(tmp_path: Path) -> None:
    """SYNCENGINE_REFERENCE_FILE_ROOTS narrows a trusted repository's file:// references;
    a symlink below an allowed folder that leads out of it is judged by where it leads."""
    allowed, outside = tmp_path / "nfs", tmp_path / "home"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "labels.csv").write_bytes(b"a,b\n")
    (outside / "secret.txt").write_bytes(b"private")
    (allowed / "link.txt").symlink_to(outside / "secret.txt")
    trusted = {TRUST: "*"}
    for name, uri in [("in", f"file://{allowed}/labels.csv"), ("out", f"file://{allowed}/link.txt")]:
        rc, _, err = cli(
            "put", "-n", f"p/{name}", "-t", "t", "--reference", uri, "--repo", "repo", cwd=tmp_path
        )
        assert rc == 0, err
    roots = {**trusted, "SYNCENGINE_REFERENCE_FILE_ROOTS": f"{tmp_path / 'elsewhere'},{allowed}"}
    rc, _, err = cli("get", "p/in", "--root", "in", "--repo", "repo", cwd=tmp_path, env=roots)
    assert rc == 0, err
    assert (tmp_path / "in" / "labels.csv").read_bytes() == b"a,b\n"
    rc, _, err = cli("get", "p/out", "--root", "out", "--repo", "repo", cwd=tmp_path, env=roots)
    assert rc == 1 and "outside the folders SYNCENGINE_REFERENCE_FILE_ROOTS allows" in err, err
    assert not (tmp_path / "out" / "link.txt").exists()
    rc, _, err = cli(
        "verify", "p/out", "--root", "out", "--references", "--repo", "repo", cwd=tmp_path, env=roots
    )
    assert rc == 1 and "SYNCENGINE_REFERENCE_FILE_ROOTS" in err, err
    rc, _, err = cli("get", "p/out", "--root", "out", "--repo", "repo", cwd=tmp_path, env=trusted)
    assert rc == 0, err  # unset: a trusted repository's references are read wherever they are

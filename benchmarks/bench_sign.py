"""What one S3 request costs the client: botocore's SigV4 signer (as S3Store uses it) against aiobotocore.

Usage::

    python benchmarks/bench_sign.py [--requests N] [--skip-aiobotocore] [--peers-python PATH]

Measured in the same run:

* ``sign_us``: microseconds to sign one request with botocore's ``S3SigV4Auth`` on an
  ``AWSRequest``: ``unsigned_payload`` is what S3Store does (``UNSIGNED-PAYLOAD`` plus a
  Content-MD5 header), ``signed_payload_1k``/``_1m`` let botocore SHA-256 a 1 KiB/1 MiB body;
* ``per_request``: a PUT of 1 KiB and a HEAD, one at a time, against a trivial local HTTP
  server running in a child process (so the client process's CPU time is the client's
  cost), through plain unsigned aiohttp (the floor), S3Store, and an aiobotocore client.
  ``cpu_us`` is client CPU per request, ``wall_us`` latency, ``overhead_cpu_us`` the cost
  above plain aiohttp;
* ``payload_hash_MBps``: MD5, SHA-256 and CRC32 throughput over 64 MiB (the cost of
  Content-MD5, of signing the payload, of a CRC checksum).

aiobotocore is a peer, never a project dependency: it pins its own botocore, so it runs
in ``benchmarks/.peers-venv`` (created/extended on first use, like bench_hash's wandb), in
a subprocess that runs this file with ``--client-only``. If it cannot be installed, the
JSON says so. One JSON object goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
PEERS_VENV = BENCH_DIR / ".peers-venv"
ACCESS_KEY = "AKIDBENCHMARK"
SECRET_KEY = "bench-secret-key-not-a-real-one"
BODY = os.urandom(1024)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- the trivial server (child process) -------------------------------------------------


def serve(port_queue: Any, stop: Any) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        headers = {
            "ETag": '"0123456789abcdef0123456789abcdef"',
            "Last-Modified": "Mon, 02 Jan 2023 03:04:05 GMT",
            "x-amz-request-id": "bench",
        }
        if request.method == "HEAD":
            headers["Content-Length"] = "1024"
        return web.Response(headers=headers)

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_queue.put(runner.addresses[0][1])
        while not stop.is_set():
            await asyncio.sleep(0.2)
        await runner.cleanup()

    asyncio.run(main())


# ---- clients -----------------------------------------------------------------------------


async def timed(n: int, op: Any) -> dict[str, float]:
    for _ in range(min(200, n)):  # warm up: connection, imports, caches
        await op()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        await op()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"cpu_us": round(cpu / n * 1e6, 1), "wall_us": round(wall / n * 1e6, 1)}


async def bench_raw(endpoint: str, n: int) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as session:

        async def put() -> None:
            async with session.put(f"{endpoint}/bkt/key", data=BODY) as r:
                await r.read()

        async def head() -> None:
            async with session.head(f"{endpoint}/bkt/key") as r:
                await r.read()

        return {"put_1k": await timed(n, put), "head": await timed(n, head)}


async def bench_s3store(endpoint: str, n: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from syncengine.store import S3Store

    async with S3Store(
        "bkt", endpoint_url=endpoint, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY
    ) as store:

        async def put() -> None:
            await store.put("key", BODY)

        async def head() -> None:
            await store.head("key")

        return {"put_1k": await timed(n, put), "head": await timed(n, head)}


async def bench_aiobotocore(endpoint: str, n: int) -> dict[str, Any]:
    import aiobotocore
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    session = get_session()
    config = AioConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
    async with session.create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=config,
    ) as client:

        async def put() -> None:
            await client.put_object(Bucket="bkt", Key="key", Body=BODY)

        async def head() -> None:
            await client.head_object(Bucket="bkt", Key="key")

        result: dict[str, Any] = {"put_1k": await timed(n, put), "head": await timed(n, head)}
    import botocore

    result["versions"] = {"aiobotocore": aiobotocore.__version__, "botocore": botocore.__version__}
    return result


# ---- signing and hashing alone -------------------------------------------------------


def bench_sign(n: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import ReadOnlyCredentials

    from syncengine.store.s3 import _Signer

    creds = ReadOnlyCredentials(ACCESS_KEY, SECRET_KEY, None)
    url = "http://127.0.0.1:9000/bkt/packs/ab/abcdef0123456789"
    headers = {"Content-Length": "1024", "Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg=="}
    signer = _Signer()

    def ours() -> None:
        signer.sign("PUT", url, dict(headers), creds, "us-east-1")

    def botocore_signed(body: bytes) -> Any:
        def run() -> None:
            req = AWSRequest(method="PUT", url=url, headers={"Content-Length": str(len(body))}, data=body)
            S3SigV4Auth(creds, "s3", "us-east-1").add_auth(req)

        return run

    out: dict[str, Any] = {}
    for name, fn, reps in [
        ("unsigned_payload", ours, n),
        ("signed_payload_1k", botocore_signed(BODY), n),
        ("signed_payload_1m", botocore_signed(os.urandom(1 << 20)), max(50, n // 100)),
    ]:
        for _ in range(min(200, reps)):
            fn()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        out[name] = round((time.perf_counter() - t) / reps * 1e6, 1)
    return out


def bench_hashes() -> dict[str, float]:
    data = os.urandom(64 << 20)
    out = {}
    for name, fn in [
        ("md5", lambda: hashlib.md5(data).digest()),
        ("sha256", lambda: hashlib.sha256(data).digest()),
        ("crc32", lambda: zlib.crc32(data)),
    ]:
        best = min(_time(fn) for _ in range(3))
        out[name] = round(len(data) / best / 1e6)
    return out


def _time(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---- aiobotocore in the peers venv ------------------------------------------------------


def peers_python(explicit: str | None) -> tuple[Path | None, str]:
    """An interpreter that can import aiobotocore, installing it into the peers venv if needed."""
    if explicit:
        return Path(explicit), ""
    python = PEERS_VENV / "bin" / "python"
    probe = [str(python), "-c", "import aiobotocore, aiohttp"]
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return python, ""
    log(f"installing aiobotocore into {PEERS_VENV} (once)")
    steps = [[str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "aiobotocore"]]
    if not python.exists():
        steps.insert(0, [sys.executable, "-m", "venv", str(PEERS_VENV)])
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            return None, f"could not install aiobotocore from PyPI: {r.stderr.strip()[-300:]}"
    return python, ""


def run_aiobotocore(python: Path, endpoint: str, n: int) -> dict[str, Any]:
    cmd = [str(python), str(Path(__file__).resolve()), "--client-only", endpoint, "--requests", str(n)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return {"available": False, "reason": f"the aiobotocore run failed: {r.stderr.strip()[-500:]}"}
    result: dict[str, Any] = json.loads(r.stdout)
    result["available"] = True
    result["python"] = str(python)
    return result


# ---- main ----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000, help="requests per measured loop")
    ap.add_argument("--skip-aiobotocore", action="store_true")
    ap.add_argument("--peers-python", help="an interpreter with aiobotocore (default: the peers venv)")
    ap.add_argument("--client-only", metavar="ENDPOINT", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.client_only:  # inside the peers venv: just the aiobotocore loop
        print(json.dumps(asyncio.run(bench_aiobotocore(args.client_only, args.requests))))
        return

    import botocore

    ctx = multiprocessing.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=serve, args=(ports, stop), daemon=True)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{ports.get(timeout=30)}"
        n = args.requests
        log("signing alone")
        sign = bench_sign(n * 3)
        log("plain aiohttp")
        raw = asyncio.run(bench_raw(endpoint, n))
        log("S3Store")
        ours = asyncio.run(bench_s3store(endpoint, n))
        peer: dict[str, Any]
        if args.skip_aiobotocore:
            peer = {"available": False, "reason": "--skip-aiobotocore"}
        else:
            python, why = peers_python(args.peers_python)
            if python is None:
                peer = {"available": False, "reason": why}
            else:
                log(f"aiobotocore ({python})")
                peer = run_aiobotocore(python, endpoint, n)
        log("payload hashes")
        hashes = bench_hashes()
    finally:
        stop.set()
        server.join(10)

    def overhead(client: dict[str, Any]) -> dict[str, Any]:
        return {
            op: {**client[op], "overhead_cpu_us": round(client[op]["cpu_us"] - raw[op]["cpu_us"], 1)}
            for op in ("put_1k", "head")
        }

    per_request: dict[str, Any] = {"aiohttp_unsigned": raw, "s3store": overhead(ours)}
    if peer.get("available"):
        per_request["aiobotocore"] = {**overhead(peer), "versions": peer["versions"]}
    else:
        per_request["aiobotocore"] = peer
    result = {
        "benchmark": "bench_sign",
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "botocore": botocore.__version__,
        "requests_per_loop": n,
        "sign_us": sign,
        "per_request": per_request,
        "payload_hash_MBps": hashes,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

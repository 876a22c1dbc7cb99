"""Child process of test_gc_takeover's kill test: one `gc` run that sweeps, printing a line
after each renewal of its sweep intent (so the parent can SIGKILL it mid-sweep).

    python -m tests.integration.gc_kill_child REPO_PATH GRACE
"""

from __future__ import annotations

import asyncio
import sys

from syncengine.hashing.params import ChunkerParams
from syncengine.repo import gc_sweep
from syncengine.repo.repository import Repository
from syncengine.store.local import LocalStore

PARAMS = ChunkerParams(4096, 16384, 65536)


async def main(path: str, grace: float) -> None:
    real = gc_sweep._Claim.renew
    count = 0

    async def renew(self: gc_sweep._Claim, *, finished: bool = False) -> None:
        nonlocal count
        await real(self, finished=finished)
        count += 1
        print(f"renewed {count}", flush=True)

    async def no_heartbeat(self: gc_sweep._Claim) -> None:
        """Only the renewals before the sweep's steps are counted."""

    gc_sweep._Claim.renew = renew  # type: ignore[method-assign]
    gc_sweep._Claim.heartbeat = no_heartbeat  # type: ignore[method-assign]
    repo = await Repository.open(LocalStore(path), params=PARAMS)
    run = await gc_sweep.collect(repo, grace=grace)
    print(f"phase {run.phase}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))

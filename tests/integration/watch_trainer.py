"""A simulated trainer for the watch tests: writes checkpoints ``step1/`` … ``stepN/`` into a
folder, each file in small pieces with pauses (as torch.save to a slow disk does).

    python -m tests.integration.watch_trainer FOLDER N [MiB per checkpoint]
"""

from __future__ import annotations

import json
import os
import sys
import time

PIECE = 64 << 10


def write_slowly(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        for at in range(0, len(data), PIECE):
            f.write(data[at : at + PIECE])
            f.flush()
            time.sleep(0.002)


def main() -> None:
    folder, count = sys.argv[1], int(sys.argv[2])
    mib = float(sys.argv[3]) if len(sys.argv) > 3 else 6.0
    frozen = os.urandom(int(mib * (1 << 20) / 3))  # layers that do not change between steps
    for step in range(1, count + 1):
        d = os.path.join(folder, f"step{step}")
        os.makedirs(d)
        write_slowly(os.path.join(d, "model.bin"), frozen + os.urandom(len(frozen)))
        write_slowly(os.path.join(d, "optimizer.bin"), os.urandom(len(frozen) // 2))
        with open(os.path.join(d, "metrics.json"), "w") as f:
            json.dump({"loss": 1.0 / step, "step": step}, f)
        print(f"wrote step{step}", flush=True)
        time.sleep(0.2)


if __name__ == "__main__":
    main()

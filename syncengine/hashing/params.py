"""Chunker parameters (fixed per repository) and the deterministic gear table they use."""

from __future__ import annotations

from typing import Final

import msgspec

from syncengine.errors import ConfigError

KiB: Final = 1024
MiB: Final = 1024 * KiB

#: Seed of the splitmix64 sequence that fills the gear table (ASCII "syncgear").
GEAR_SEED: Final = 0x73796E6367656172
_M64: Final = (1 << 64) - 1


def gear_table(seed: int = GEAR_SEED) -> tuple[int, ...]:
    """The 256 64-bit gear values: splitmix64 outputs 1..256 from `seed` (see docs/FORMAT.md)."""
    out = []
    state = seed
    for _ in range(256):
        state = (state + 0x9E3779B97F4A7C15) & _M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        out.append(z ^ (z >> 31))
    return tuple(out)


class ChunkerParams(msgspec.Struct, frozen=True):
    """Content-defined chunking parameters; `avg_size` must be a power of two.

    >>> ChunkerParams().avg_size
    1048576
    """

    min_size: int = 256 * KiB
    avg_size: int = 1 * MiB
    max_size: int = 4 * MiB

    def __post_init__(self) -> None:
        if self.avg_size < 64 or self.avg_size & (self.avg_size - 1):
            raise ConfigError(f"chunker avg_size must be a power of two >= 64, got {self.avg_size}")
        if not 0 < self.min_size < self.avg_size < self.max_size:
            raise ConfigError(
                "chunker sizes must satisfy 0 < min_size < avg_size < max_size, got "
                f"{self.min_size}/{self.avg_size}/{self.max_size}"
            )
        if self.max_size > 1 << 30:
            raise ConfigError(f"chunker max_size must be at most 1 GiB, got {self.max_size}")

    @property
    def small_file_limit(self) -> int:
        """Files of at most this many bytes are one blob: digest = BLAKE3(content)."""
        return self.min_size

    @property
    def thresholds(self) -> tuple[int, int]:
        """(before avg, after avg): a cut is allowed where the gear hash is below it."""
        bits = self.avg_size.bit_length() - 1
        return 1 << (64 - (bits + 2)), 1 << (64 - (bits - 2))

    @property
    def label(self) -> str:
        """A short stable name, e.g. ``gear-256k-1m-4m``; stat-cache rows are keyed by it."""
        return "gear-" + "-".join(_human(v) for v in (self.min_size, self.avg_size, self.max_size))


def _human(n: int) -> str:
    for unit, size in (("g", 1 << 30), ("m", MiB), ("k", KiB)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


DEFAULT_PARAMS: Final = ChunkerParams()

"""Chooses the hashing implementation at import: the C core, or the pure-Python reference.

`SYNCENGINE_NO_EXTENSIONS=1` selects the reference. Under `CI=true` a missing extension is an
error, never a silent fallback.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from syncengine.errors import NativeExtensionMissing
from syncengine.hashing import reference


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def load(prefer_native: bool = True) -> ModuleType:
    """The implementation module: `syncengine._native` or `syncengine.hashing.reference`."""
    if not prefer_native or _truthy("SYNCENGINE_NO_EXTENSIONS"):
        return reference
    try:
        native = importlib.import_module("syncengine._native")
    except ImportError as e:
        if _truthy("CI"):
            raise NativeExtensionMissing(
                f"the compiled core syncengine._native is missing ({e}); build it with `pip install .`"
            ) from e
        return reference
    return native


impl: ModuleType = load()
#: "native" or "python": which implementation this process uses.
IMPLEMENTATION: str = impl.NAME

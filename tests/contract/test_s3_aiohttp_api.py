"""S3Store uses aiohttp through its public API only: no private attribute of an aiohttp object
is read or set anywhere in syncengine (a static check), and aiohttp's own hidden resend of a
request on a dropped kept-alive connection stays off (a client middleware, not the private
``ClientSession._retry_connection``), so the retry policy sees every attempt."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import aiohttp
import pytest

from syncengine.errors import StoreUnavailable
from syncengine.store import RetryPolicy

from .test_s3_store import FakeS3, fake, fake_store  # noqa: F401  (fake: a fixture)

SOURCE = Path(__file__).resolve().parents[2] / "syncengine"


def _aiohttp_private_names() -> set[str]:
    """Every ``self._name`` that aiohttp's own classes set or declare."""
    names: set[str] = set()
    for path in Path(aiohttp.__file__).parent.glob("*.py"):
        text = path.read_text()
        names.update(re.findall(r"self\.(_[A-Za-z]\w*)\s*[:=]", text))
        names.update(re.findall(r'"(_[A-Za-z]\w*)"', text))  # ATTRS / __slots__ entries
    return {n for n in names if not n.startswith("__")}


def _foreign_private_uses() -> dict[str, list[str]]:
    """``x._name`` on anything but ``self``/``cls`` (and ``getattr``/``hasattr``/``setattr``
    with a ``"_name"``) where syncengine itself never sets ``self._name``: private attributes
    of other people's objects."""
    own: set[str] = set()
    uses: dict[str, list[str]] = {}
    trees = {p: ast.parse(p.read_text()) for p in SOURCE.rglob("*.py")}
    for tree in trees.values():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                own.add(node.attr)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                own.add(node.name)
    for path, tree in trees.items():
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Attribute) and not (
                isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            ):
                name = node.attr
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr", "setattr")
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
            ):
                name = str(node.args[1].value)
            if name and name.startswith("_") and not name.startswith("__") and name not in own:
                uses.setdefault(name, []).append(f"{path.relative_to(SOURCE.parent)}:{node.lineno}")
    return uses


def test_no_private_attribute_of_aiohttp_is_used() -> None:
    private = _aiohttp_private_names()
    assert "_retry_connection" in private  # the check sees what it looks for
    used = {name: where for name, where in _foreign_private_uses().items() if name in private}
    assert not used, f"private aiohttp attributes used: {used}"


async def test_a_dropped_kept_alive_connection_is_not_resent_behind_the_retry_policy(
    fake: tuple[FakeS3, str],  # noqa: F811
) -> None:
    """A PUT whose kept-alive connection drops is one attempt, seen and counted: with one
    attempt allowed it fails, and the server saw it once (aiohttp alone would resend it)."""
    server, ep = fake
    one = RetryPolicy(max_attempts=1, base_delay=0.0, stall_timeout=5.0, deadline=30.0)
    async with fake_store(ep, retry=one, direct_reads=False) as store:
        await store.put("a", b"first")  # opens the connection the next PUT reuses
        server.script = ["store-then-reset"]
        with pytest.raises(StoreUnavailable, match="1 attempt"):
            await store.put("b", b"second")
        assert [r[:2] for r in server.requests] == [("PUT", "a"), ("PUT", "b")]
        assert server.peers[0] == server.peers[1]  # the second PUT did reuse the connection

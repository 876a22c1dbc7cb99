"""What a user installs is what the suite tests: sdist -> wheel -> a fresh venv, run from outside the tree.

An editable install finds every folder of the checkout, so a module the wheel leaves out
(as `syncengine.watch` once was) is invisible to the rest of the suite. Here the package is
built the way `pip install .` and PyPI users get it: `python -m build` makes the sdist and
then the wheel *from that sdist* (so MANIFEST.in and package discovery are both exercised),
the wheel goes into a new venv, and every command runs with the working folder, HOME and
the data dirs outside the checkout, so nothing in the source tree can shadow the install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE = REPO_ROOT / "syncengine"
TIMEOUT = 600.0  # a deadline for a hang, not a timing assertion


def source_modules() -> list[str]:
    """Every module of the source tree as a dotted name (packages by their __init__)."""
    names = []
    for f in sorted(SOURCE.rglob("*.py")):
        parts = f.relative_to(REPO_ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def wheel_python_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return {n for n in z.namelist() if n.startswith("syncengine/") and n.endswith(".py")}


@dataclass
class Installed:
    wheel: Path
    venv: Path
    home: Path  # HOME, data/cache/state dirs and the working folder of every command

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SYNCENGINE_", "PYTHON", "VIRTUAL_ENV", "AWS_"))
        }
        env.update(
            HOME=str(self.home),
            XDG_DATA_HOME=str(self.home / ".local/share"),
            XDG_CACHE_HOME=str(self.home / ".cache"),
            XDG_STATE_HOME=str(self.home / ".local/state"),
            PATH=f"{self.bin}{os.pathsep}{env.get('PATH', '')}",
        )
        return env

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            list(args), cwd=self.home, env=self.env(), capture_output=True, text=True, timeout=TIMEOUT
        )
        if check and p.returncode != 0:
            raise AssertionError(f"{args} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        return p


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    out = tmp_path_factory.mktemp("dist")
    # sdist, then the wheel built from the unpacked sdist (python -m build's default order)
    build = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO_ROOT)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert build.returncode == 0, f"python -m build failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    (wheel,) = out.glob("syncengine-*.whl")
    assert list(out.glob("syncengine-*.tar.gz")), "no sdist was built"
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=TIMEOUT)
    pip = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert pip.returncode == 0, f"installing the wheel failed:\n{pip.stdout[-4000:]}\n{pip.stderr[-4000:]}"
    home = tmp_path_factory.mktemp("home")
    yield Installed(wheel, venv, home)


def test_the_wheel_holds_exactly_the_source_trees_modules(installed: Installed) -> None:
    in_source = {str(f.relative_to(REPO_ROOT)) for f in SOURCE.rglob("*.py")}
    in_wheel = wheel_python_files(installed.wheel)
    assert in_wheel == in_source, {
        "missing from the wheel": sorted(in_source - in_wheel),
        "only in the wheel": sorted(in_wheel - in_source),
    }
    with zipfile.ZipFile(installed.wheel) as z:
        names = z.namelist()
    assert "syncengine/py.typed" in names
    assert any(n.startswith("syncengine/_native") and n.endswith(".so") for n in names), names


def test_every_module_imports_from_the_installed_wheel(installed: Installed) -> None:
    mods = source_modules()
    # `__main__` runs the CLI when imported: it is found, not imported
    code = (
        "import importlib, importlib.util, json, sys\n"
        "mods = json.loads(sys.argv[1])\n"
        "files = {m: importlib.util.find_spec(m).origin if m.endswith('.__main__')\n"
        "         else importlib.import_module(m).__file__ for m in mods}\n"
        "print(json.dumps(files))\n"
    )
    p = installed.run(str(installed.bin / "python"), "-c", code, json.dumps(mods))
    files = json.loads(p.stdout)
    site = str(installed.venv)
    outside = {m: f for m, f in files.items() if not f.startswith(site)}
    assert not outside, f"modules imported from outside the venv: {outside}"


def test_version_reports_the_native_core(installed: Installed) -> None:
    out = installed.run("syncengine", "--version").stdout
    assert "native core" in out, out


def test_put_then_get_round_trip_on_the_embedded_default(installed: Installed) -> None:
    data = installed.home / "data"
    (data / "train").mkdir(parents=True)
    files = {"train/a.bin": os.urandom(3 << 20), "train/b.txt": b"hello\n", "labels.csv": b"x,y\n1,2\n"}
    for rel, body in files.items():
        (data / rel).write_bytes(body)
    put = installed.run("syncengine", "put", "-n", "proj/data", "-t", "dataset", "data")
    assert "v0" in put.stdout, put.stdout
    # the embedded default lives under the (redirected) user data dir, never in the checkout
    assert str(installed.home) in put.stderr + put.stdout
    installed.run("syncengine", "get", "proj/data:v0", "--root", "out")
    for rel, body in files.items():
        assert (installed.home / "out" / rel).read_bytes() == body, rel


def test_watch_logs_a_checkpoint_from_the_installed_wheel(installed: Installed) -> None:
    ck = installed.home / "ckpts"
    ck.mkdir()
    proc = subprocess.Popen(
        ["syncengine", "watch", str(ck), "-n", "proj/ckpt", "-t", "model", "--settle", "1s", "--log-json"],
        cwd=installed.home,
        env=installed.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killer = threading.Timer(TIMEOUT, proc.kill)  # a hang ends the read loop, it does not block CI
    killer.start()
    events = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            event = json.loads(line)
            events.append(event)
            if event["event"] == "start":
                step = ck / "step-1"
                step.mkdir()
                (step / "weights.bin").write_bytes(os.urandom(1 << 20))
                (ck / "step-1.done").write_text("")
            if event["event"] == "logged":
                break
        proc.terminate()
        proc.wait(TIMEOUT)
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read() if proc.stderr else ""
    assert [e["checkpoint"] for e in events if e["event"] == "logged"] == ["step-1"], (events, err)
    versions = json.loads(installed.run("syncengine", "versions", "proj/ckpt", "--json").stdout)
    assert len(versions) == 1, versions

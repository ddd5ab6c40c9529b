"""Isolation is chosen once and reported loudly when it is weak."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pyvision_env.execution import (
    Engine,
    ExecutionLimits,
    SandboxConfig,
    SandboxUnavailableError,
    WeakIsolationWarning,
    probe_bubblewrap,
)

from .conftest import requires_sandbox


def test_weak_mode_is_reported_and_still_limits_resources():
    with pytest.warns(WeakIsolationWarning, match="WITHOUT a sandbox"):
        engine = Engine(sandbox=SandboxConfig(isolation="none"), spare_kernels=1,
                        limits=ExecutionLimits(cell_timeout=5, interrupt_grace=0.5, memory_bytes=1 << 30))
    with engine:
        status = engine.status()
        assert status.weak and status.isolation == "none"
        assert "requested" in status.isolation_reason
        with engine.session() as s:
            assert s.run("print('works')").stdout == "works\n"
            bomb = s.run("x = bytearray(3 << 30)")
            assert bomb.error_name == "MemoryError"
            assert s.run("import os\nprint(os.environ.get('HOME', '').endswith('/work'))").stdout == "True\n"


def test_required_sandbox_raises_when_bubblewrap_is_missing(monkeypatch, tmp_path):
    probe_bubblewrap.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no bwrap
    try:
        with pytest.raises(SandboxUnavailableError, match="not installed"):
            Engine(sandbox=SandboxConfig(isolation="bubblewrap"))
        with pytest.warns(WeakIsolationWarning, match="not installed"):
            engine = Engine(sandbox=SandboxConfig(isolation="auto", python=None), spare_kernels=0)
        engine.close()
        assert engine.isolation == "none"
    finally:
        probe_bubblewrap.cache_clear()


@requires_sandbox
def test_sandboxed_kernel_sees_an_isolated_world(session):
    result = session.run(
        "import os, socket\n"
        "print(os.getpid() < 10, sorted(n for _, n in socket.if_nameindex()))\n"
        "print(sorted(os.environ))\n"
        "print(json.dumps([os.listdir('/root'), os.listdir('/home')]))")
    lines = result.stdout.splitlines()
    assert lines[0] == "True ['lo']"
    assert "AWS" not in lines[1] and "PATH" in lines[1]
    # Home directories are empty but for the path to the Python installation itself.
    python_dirs = {Path(p).relative_to("/root").parts[0] for p in (sys.base_prefix, sys.prefix)
                   if p.startswith("/root/")}
    root_listing, home_listing = json.loads(lines[2])
    assert set(root_listing) <= python_dirs and home_listing == []


def test_interpreter_under_tmp_is_re_exposed_but_never_the_engine_root(tmp_path):
    from pyvision_env.execution.sandbox import python_paths

    venv = tmp_path / "checkout" / ".venv"
    (venv / "bin").mkdir(parents=True)
    engine_root = tmp_path / "pyvision-1-abc"
    engine_root.mkdir()
    paths = python_paths(SandboxConfig(python=str(venv / "bin" / "python")), engine_root)
    assert str(venv) in paths
    assert "/tmp" not in paths and str(tmp_path) not in paths
    assert not any(str(engine_root).startswith(p.rstrip("/") + "/") for p in paths)

"""Process isolation of kernels: the bubblewrap command, resource limits and cgroups.

bubblewrap gives each kernel no network, its own PID/IPC namespaces, a read-only root, a private
/tmp, hidden home directories, a scrubbed environment, and death with its parent. Only the kernel's
own directory is writable (its IPC sockets live there); its working directory and /tmp are
size-limited tmpfs mounts. Resource limits (address space, file size, open files) are set in the
child before exec; processes and memory are also capped by a per-kernel cgroup when the cgroup
filesystem is writable (v2 with delegation, or v1 ``pids``/``memory`` hierarchies).

When bubblewrap cannot run (e.g. inside some containers) the engine falls back to plain processes in
their own session with the same resource limits, and reports it: :func:`probe_bubblewrap` says why.
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .limits import ExecutionLimits, SandboxConfig

CGROUP_ROOT = Path("/sys/fs/cgroup")
_PR_SET_PDEATHSIG = 1


class SandboxUnavailableError(RuntimeError):
    """Raised when ``isolation="bubblewrap"`` is required but bubblewrap does not work here."""


@functools.lru_cache(maxsize=1)
def probe_bubblewrap() -> tuple[bool, str]:
    """Run a trivial command in the sandbox once per process. Returns ``(works, reason)``."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return False, "bubblewrap (bwrap) is not installed; install the Debian package 'bubblewrap'"
    cmd = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
           "--unshare-net", "--unshare-pid", "--unshare-ipc", "--new-session", "--die-with-parent",
           "--clearenv", "--", "/bin/sh", "-c", "echo sandbox-ok"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"bubblewrap failed to run: {exc}"
    if done.returncode != 0 or "sandbox-ok" not in done.stdout:
        return False, f"bubblewrap does not work here (exit {done.returncode}): {done.stderr.strip()[:300]}"
    return True, f"bubblewrap at {bwrap}"


# --- cgroups -------------------------------------------------------------------------------------

@dataclass
class Cgroup:
    """One kernel's cgroup(s): a directory per hierarchy (one for v2; ``pids`` and ``memory`` for v1)."""

    dirs: tuple[Path, ...]

    def open_procs(self) -> list[int]:
        """File descriptors of the ``cgroup.procs`` files, opened before fork so the child only writes."""
        return [os.open(d / "cgroup.procs", os.O_WRONLY) for d in self.dirs]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs:
            try:
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return found

    def kill_all(self) -> None:
        """SIGKILL every process in the cgroup (escaped daemons included). Without ``cgroup.kill`` (cgroup v1) the
        listing is read again until it shows no process that was not already killed: a process forked before the
        kill is then in it, and a killed one can fork no more (killed processes stay listed until they are gone,
        which :meth:`wait_empty` waits for)."""
        for d in self.dirs:
            kill_file = d / "cgroup.kill"
            if kill_file.exists():
                try:
                    kill_file.write_text("1")
                    continue
                except OSError:
                    pass
        killed: set[int] = set()
        for _ in range(50):
            pids = self.pids() - killed
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed |= pids

    def wait_empty(self, timeout: float) -> None:
        """Wait until killed processes are gone (the namespace's init reaps them a moment after the kill)."""
        until = time.monotonic() + timeout
        while self.pids() and time.monotonic() < until:
            time.sleep(0.01)

    def remove(self) -> None:
        for d in self.dirs:
            try:
                d.rmdir()
            except OSError:
                pass  # still busy (a process not reaped yet): the next sweep of the engine removes it


class CgroupManager:
    """Creates per-kernel cgroups under a directory of its own, in whichever hierarchy is writable."""

    def __init__(self, root: Path = CGROUP_ROOT) -> None:
        self.version, self.parents = self._find(root)
        for parent in self.parents:
            for leftover in parent.parent.glob("pyvision-*-*"):
                owner = leftover.name.split("-")[1]
                if owner.isdigit() and not pid_exists(int(owner)):
                    _remove_cgroup_tree(leftover)

    @staticmethod
    def _find(root: Path) -> tuple[str, tuple[Path, ...]]:
        tag = f"pyvision-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        candidates: list[tuple[str, tuple[Path, ...]]] = []
        if (root / "cgroup.controllers").exists():  # unified (v2) hierarchy mounted at the root
            own = _own_v2_cgroup(root)
            if own is not None and {"pids", "memory"} <= set((own / "cgroup.subtree_control").read_text().split()):
                candidates.append(("v2", (own / tag,)))
        if (root / "pids" / "cgroup.procs").exists():
            dirs = [root / "pids" / tag]
            if (root / "memory" / "cgroup.procs").exists():
                dirs.append(root / "memory" / tag)
            candidates.append(("v1", tuple(dirs)))
        for version, dirs in candidates:
            made: list[Path] = []
            try:
                for d in dirs:
                    d.mkdir()
                    made.append(d)
                return version, dirs
            except OSError:
                for d in made:
                    d.rmdir()
        return "none", ()

    @property
    def available(self) -> bool:
        return self.version != "none"

    def create(self, name: str, limits: ExecutionLimits) -> Cgroup | None:
        """A cgroup for one kernel with ``pids.max`` and a memory ceiling; ``None`` if cgroups are unusable."""
        if not self.available:
            return None
        dirs = []
        try:
            for parent in self.parents:
                d = parent / name
                d.mkdir()
                dirs.append(d)
                if (d / "pids.max").exists():
                    (d / "pids.max").write_text(str(limits.max_processes))
                memory_ceiling = str(limits.memory_bytes + limits.disk_bytes)
                for memory_file in ("memory.max", "memory.limit_in_bytes"):
                    if (d / memory_file).exists():
                        (d / memory_file).write_text(memory_ceiling)
        except OSError:
            Cgroup(tuple(dirs)).remove()
            return None
        return Cgroup(tuple(dirs))

    def close(self) -> None:
        for parent in self.parents:
            _remove_cgroup_tree(parent)


def _remove_cgroup_tree(parent: Path) -> None:
    """Kill everything in ``parent``'s child cgroups, then remove them and ``parent``."""
    for child in parent.glob("*"):
        if child.is_dir():
            cgroup = Cgroup((child,))
            cgroup.kill_all()
            cgroup.wait_empty(timeout=2.0)
            cgroup.remove()
    try:
        parent.rmdir()
    except OSError:
        pass


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _own_v2_cgroup(root: Path) -> Path | None:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                path = root / line[3:].lstrip("/")
                return path if os.access(path, os.W_OK) else None
    except OSError:
        return None
    return None


# --- process launch ------------------------------------------------------------------------------

def kernel_environment(config: SandboxConfig, home: str) -> dict[str, str]:
    """The kernel's whole environment: nothing is inherited from the parent (no secrets leak)."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": "/tmp",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": "/tmp/matplotlib",
        "IPYTHONDIR": "/tmp/ipython",
        "JUPYTER_RUNTIME_DIR": "/tmp/jupyter",
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONBREAKPOINT": "0",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    env.update(dict(config.env))
    return env


def host_view_options(config: SandboxConfig, engine_root: Path, tmp_bytes: int | None = None) -> list[str]:
    """bubblewrap options for what a sandbox sees of the host: the root read-only, a private ``/tmp`` (of
    ``tmp_bytes`` when given), the hidden paths empty, the interpreter's own directories read-only."""
    options = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    options += (["--size", str(tmp_bytes)] if tmp_bytes is not None else []) + ["--tmpfs", "/tmp"]
    for hidden in config.hidden_paths:
        if os.path.isdir(hidden) and not os.path.islink(hidden):
            options += ["--tmpfs", hidden]
    for path in python_paths(config, engine_root) + tuple(config.extra_readonly_paths):
        options += ["--ro-bind", path, path]
    return options


def bubblewrap_options(kernel_dir: Path, work_dir: Path, inputs_dir: Path, config: SandboxConfig,
                       limits: ExecutionLimits, env: dict[str, str]) -> list[str]:
    """The ``bwrap`` options for one kernel: what is visible, writable and reachable. They reach bubblewrap
    through a file descriptor (:func:`options_file`), not its command line, which the kernel can read as its
    PID 1's ``/proc/1/cmdline``."""
    cmd = host_view_options(config, kernel_dir.parent, limits.disk_bytes)
    # The engine's root (other kernels' directories and keys) is hidden; only this kernel's is mounted.
    cmd += ["--tmpfs", str(kernel_dir.parent),
            "--bind", str(kernel_dir), str(kernel_dir),
            "--ro-bind", str(inputs_dir), str(inputs_dir),
            "--size", str(limits.disk_bytes), "--tmpfs", str(work_dir),
            "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", "sandbox",
            "--new-session", "--die-with-parent", "--clearenv", "--chdir", str(work_dir)]
    return cmd + environment_options(env)


def environment_options(env: dict[str, str]) -> list[str]:
    return [option for key, value in env.items() for option in ("--setenv", key, value)]


def options_file(options: list[str]) -> int:
    """A file descriptor (unnamed, in memory) holding ``options`` as ``bwrap --args FD`` reads them:
    NUL-terminated, from the start. The caller passes it to the child and closes it."""
    fd = os.memfd_create("pyvision-bwrap-options")
    os.write(fd, b"".join(option.encode() + b"\0" for option in options))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def python_paths(config: SandboxConfig, engine_root: Path) -> tuple[str, ...]:
    """The interpreter's directories that the sandbox's own mounts would hide (under a hidden path or
    /tmp, e.g. a virtual environment in a checkout under /tmp), to re-expose read-only. A directory that
    contains the engine's root is never among them (it would expose other kernels' files)."""
    given = config.python or sys.executable
    real = os.path.realpath(given)
    candidates = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.dirname(given)),
                  os.path.dirname(real), os.path.dirname(os.path.dirname(real))}
    candidates |= {os.path.realpath(p) for p in candidates}
    shadowed = (*config.hidden_paths, "/tmp")
    return tuple(sorted(p for p in candidates if os.path.isdir(p) and _is_under(p, shadowed)
                        and p not in shadowed and not _is_under(str(engine_root), (p,))))


def _is_under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def make_preexec(limits: ExecutionLimits | None, cgroup_fds: list[int], die_with_parent: bool
                  ) -> Callable[[], None]:
    """What the child does between fork and exec: join the cgroup, set resource limits (none when ``limits`` is
    None), and die with the forking thread when ``die_with_parent``.

    Only plain system calls, since the parent has threads.
    """
    libc = ctypes.CDLL(None, use_errno=True) if die_with_parent else None
    rlimits = [] if limits is None else [(resource.RLIMIT_AS, limits.memory_bytes),
                                         (resource.RLIMIT_FSIZE, limits.max_file_bytes),
                                         (resource.RLIMIT_NOFILE, limits.max_open_files),
                                         (resource.RLIMIT_CORE, 0)]

    def preexec() -> None:
        for fd in cgroup_fds:
            os.write(fd, b"0")
        for which, value in rlimits:
            _, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, value))
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return preexec

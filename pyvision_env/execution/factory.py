"""Kernels in milliseconds: a factory process that imports once and forks every kernel.

Starting a kernel the usual way (a new interpreter that imports ipykernel, numpy, PIL and matplotlib) costs
about 0.8 CPU-seconds; a kernel forked from a process that already holds those imports costs a few tens of
milliseconds and shares the imported pages. :class:`KernelFactory` starts that process (the code is in
``factory_process.py``) inside one bubblewrap sandbox that may create namespaces, and asks it for kernels; each
kernel then unshares its own mount, PID, IPC, network and UTS namespaces and mounts its private directories
before any model code runs (the isolation is the same as a kernel started in a sandbox of its own).

A factory that dies is started again on the next request (the kernels it forked die with it: their episodes
see "state lost" and go on in fresh kernels). Where the factory cannot work (no namespaces for it, a thread
after its imports) the engine starts kernels one process each, and says so in ``engine.status()`` and in
``pyvision doctor``.

Example:
    >>> from pyvision_env.execution import Engine, SandboxConfig
    >>> with Engine(sandbox=SandboxConfig(kernel_start="fork")) as engine:    # doctest: +SKIP
    ...     engine.status().kernel_start
    'fork'
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .limits import ExecutionLimits, SandboxConfig
from .sandbox import environment_options, host_view_options, kernel_environment, make_preexec, options_file

FACTORY_SCRIPT = Path(__file__).with_name("factory_process.py")
EXIT_STATUS_FILE = "exit_status"
"""Written into a forked kernel's directory by its init: the kernel's exit code (negative: killed by that signal)."""
FACTORY_CAPABILITIES = ("CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SETPCAP")
"""What the factory's sandbox keeps so that each kernel can make its namespaces, mounts and loopback, and then
drop every capability (kernels keep none)."""
REQUEST_TIMEOUT = 30.0


class FactoryError(RuntimeError):
    """The factory could not start or could not fork a kernel (the message says why)."""


class KernelFactory:
    """The engine's factory process. Blocking methods: call them from the engine's spawner thread.

    Args:
        root: the engine's directory (kernel directories are made in it; the factory sees it, kernels only
            their own).
        config: the engine's sandbox settings (interpreter, preload, hidden paths, environment).
        isolate: run the factory in bubblewrap and give each kernel its own namespaces.
    """

    def __init__(self, root: Path, config: SandboxConfig, isolate: bool) -> None:
        self.root = root
        self.config = config
        self.isolate = isolate
        self.process: subprocess.Popen | None = None
        self.pid: int | None = None
        self.starts = 0
        self._control: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the factory and wait until it has imported everything; raises :class:`FactoryError`."""
        self.stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = kernel_environment(self.config, home="/tmp")
        command = [self.config.python or sys.executable, "-I", str(FACTORY_SCRIPT), str(theirs.fileno())]
        inherited: tuple[int, ...] = (theirs.fileno(),)
        if self.isolate:
            options = factory_sandbox_options(self.root, self.config, env)
            inherited += (options_file(options),)
            command = [shutil.which("bwrap") or "bwrap", "--args", str(inherited[-1]), "--", *command]
        log = open(self.root / "factory.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd="/",
                start_new_session=True, close_fds=True, pass_fds=inherited,
                preexec_fn=make_preexec(None, [], die_with_parent=True))
        except OSError as exc:
            raise FactoryError(f"could not launch the kernel factory: {exc}") from exc
        finally:
            log.close()
            for fd in inherited[1:]:
                os.close(fd)
            theirs.close()
        self._control = ours
        self.starts += 1
        try:
            self._send({"preload": list(self.config.preload), "isolate": self.isolate})
            reply = self._receive(self.config.startup_timeout)
        except FactoryError:
            self.stop()
            raise
        if not reply.get("ok"):
            self.stop()
            raise FactoryError(f"the kernel factory cannot fork kernels here: {reply.get('error')}")
        self.pid = int(reply["pid"])

    def fork(self, kernel_dir: Path, connection_file: Path, limits: ExecutionLimits, flags: tuple[str, ...],
             cgroup_fds: list[int]) -> ForkedProcess:
        """A new kernel (its holder and kernel processes); starts the factory again first if it died."""
        env = kernel_environment(self.config, home=str(kernel_dir / "work"))
        request = {"kernel_dir": str(kernel_dir), "connection_file": str(connection_file), "env": env,
                   "limits": dataclasses.asdict(limits), "flags": list(flags)}
        with self._lock:
            if not self.running:
                self.start()
            try:
                self._send(request, cgroup_fds)
                reply = self._receive(REQUEST_TIMEOUT)
            except FactoryError:
                self.stop()  # the next request starts a new factory
                raise
        if not reply.get("ok"):
            raise FactoryError(f"the kernel factory could not fork a kernel: {reply.get('error')}")
        return ForkedProcess(int(reply["holder"]), int(reply["kernel"]), kernel_dir / EXIT_STATUS_FILE)

    def stop(self) -> None:
        """Kill the factory (its kernels die with it). Safe to call twice."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self.process is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
            self.process = None
            self.pid = None

    def _send(self, message: dict, fds: list[int] | None = None) -> None:
        assert self._control is not None
        data = json.dumps(message).encode() + b"\n"
        try:
            sent = socket.send_fds(self._control, [data], fds or [])
            if sent < len(data):
                self._control.sendall(data[sent:])
        except OSError as exc:
            raise FactoryError(f"the kernel factory is gone ({self._exit_description()}): {exc}") from exc

    def _receive(self, timeout: float) -> dict:
        assert self._control is not None
        data = b""
        until = time.monotonic() + timeout
        while not data.endswith(b"\n"):
            left = until - time.monotonic()
            if left <= 0 or not select.select([self._control], [], [], left)[0]:
                raise FactoryError(f"the kernel factory did not answer within {timeout:g} s\n{self.log_tail()}")
            chunk = self._control.recv(1 << 20)
            if not chunk:
                raise FactoryError(f"the kernel factory exited ({self._exit_description()})\n{self.log_tail()}")
            data += chunk
        return json.loads(data)

    def _exit_description(self) -> str:
        if self.process is None:
            return "not started"
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1)
        code = self.process.poll()
        return "still running" if code is None else f"exit code {code}"

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return (self.root / "factory.log").read_bytes()[-chars:].decode("utf-8", "replace")
        except OSError:
            return ""


def factory_sandbox_options(root: Path, config: SandboxConfig, env: dict[str, str]) -> list[str]:
    """bubblewrap options of the factory: the kernels' view of the host (read-only root, hidden paths, no network),
    the engine's directory writable, and the capabilities each kernel needs to isolate itself before it drops
    them all."""
    options = host_view_options(config, root)
    options += ["--bind", str(root), str(root), "--unshare-net", "--unshare-ipc", "--unshare-uts",
                "--hostname", "sandbox", "--new-session", "--die-with-parent", "--clearenv", "--chdir", "/"]
    if os.geteuid() != 0:
        options += ["--unshare-user"]  # capabilities inside a user namespace of its own
    for capability in FACTORY_CAPABILITIES:
        options += ["--cap-add", capability]
    options += environment_options(env)
    return options


class ForkedProcess:
    """A forked kernel seen from the engine: the kernel (PID 1 of its namespace) and its holder, by pidfd.

    It answers like :class:`subprocess.Popen` (``pid``, ``poll``, ``kill``, ``wait``) although the engine is
    not its parent: the exit code comes from the file the kernel's init writes.
    """

    def __init__(self, holder: int, kernel: int, status_file: Path) -> None:
        self.pid = kernel
        self.holder = holder
        self._status_file = status_file
        self.pidfd = os.pidfd_open(kernel)
        self._holder_fd = os.pidfd_open(holder)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and (self.pidfd is None or select.select([self.pidfd], [], [], 0)[0]):
            try:
                self.returncode = int(self._status_file.read_text())
            except (OSError, ValueError):
                self.returncode = -signal.SIGKILL  # killed from outside: its init could not say
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the holder (its death kills the namespace) and the kernel's init."""
        for fd in (self._holder_fd, self.pidfd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        if self.pidfd is not None and not select.select([self.pidfd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired("forked kernel", timeout or 0)
        return self.poll()  # type: ignore[return-value]

    def close(self) -> None:
        for fd in (self.pidfd, self._holder_fd):
            if fd is not None:
                os.close(fd)
        self.pidfd = self._holder_fd = None  # type: ignore[assignment]

"""Kernels in milliseconds: a factory process that imports once and forks every kernel.

Starting a kernel the usual way (a new interpreter that imports ipykernel, numpy, PIL and matplotlib) costs
about 0.6 CPU-seconds per episode; a kernel forked from a process that already holds those imports about 0.06,
and it shares the imported pages (``python -m benchmarks --only kernels`` measures both). :class:`KernelFactory`
starts that process (the code is in ``factory_process.py``) inside one bubblewrap sandbox that may create
namespaces, and asks it for kernels; each kernel gets its own mount, PID, IPC, network and UTS namespaces and
its private directories before any model code runs (the isolation is the same as a kernel started in a sandbox
of its own).

A factory that dies is started again on the next request (the kernels it forked die with it: their episodes
see "state lost" and go on in fresh kernels). Where the factory cannot work (no namespaces for it, a thread
after its imports) the engine starts kernels one process each, and says so in ``engine.status()`` and in
``pyvision doctor``.

Example:
    >>> from pyvision_env.execution import Engine, SandboxConfig
    >>> with Engine(sandbox=SandboxConfig(start_method="fork")) as engine:    # doctest: +SKIP
    ...     engine.status().start_method
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
from collections.abc import Callable
from pathlib import Path

from .limits import INPUT_IMAGES_CODE, KERNEL_FLAGS, ExecutionLimits, SandboxConfig
from .sandbox import environment_options, host_view_options, kernel_environment, make_preexec, options_file

FACTORY_SCRIPT = Path(__file__).with_name("factory_process.py")
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
        self._channel: Channel | None = None
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
        self._channel = Channel(ours, "the kernel factory", self._describe)
        self.starts += 1
        try:
            self._channel.send({"preload": list(self.config.preload), "setup": self.config.setup_code(),
                                "flags": list(KERNEL_FLAGS), "input_loader": INPUT_IMAGES_CODE,
                                "isolate": self.isolate})
            reply, _ = self._channel.receive(self.config.startup_timeout)
        except FactoryError:
            self.stop()
            raise
        if not reply.get("ok"):
            self.stop()
            raise FactoryError(f"the kernel factory cannot fork kernels here: {reply.get('error')}")
        self.pid = int(reply["pid"])

    def fork(self, kernel_dir: Path, connection_file: Path, limits: ExecutionLimits, cgroup_fds: list[int],
             template: InputTemplate | None = None) -> ForkedProcess:
        """A new kernel (its init and kernel processes), forked by ``template`` when given (it dies with it),
        else by the factory, which is started again first if it died."""
        env = kernel_environment(self.config, home=str(kernel_dir / "work"))
        request = {"kernel_dir": str(kernel_dir), "connection_file": str(connection_file), "env": env,
                   "limits": dataclasses.asdict(limits)}
        with self._lock:
            channel = template.channel if template is not None else self._running_channel()
            try:
                channel.send(request, cgroup_fds)
                reply, _ = channel.receive(REQUEST_TIMEOUT)
            except FactoryError:
                if template is None:
                    self.stop()  # the next request starts a new factory
                raise
        if not reply.get("ok"):
            raise FactoryError(f"the kernel factory could not fork a kernel: {reply.get('error')}")
        return ForkedProcess(int(reply["init"]), int(reply["kernel"]))

    def make_template(self, images: dict[str, str], directory: Path) -> InputTemplate:
        """An input template holding ``images`` (name -> path, in ``directory`` under the engine's, which the
        template owns) decoded; raises :class:`FactoryError`."""
        with self._lock:
            channel = self._running_channel()
            try:
                channel.send({"op": "template", "images": images})
                reply, fds = channel.receive(REQUEST_TIMEOUT)
            except FactoryError:
                self.stop()
                raise
            if not reply.get("ok") or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                raise FactoryError(f"the kernel factory could not make an input template: {reply.get('error')}")
            template = InputTemplate(Channel(socket.socket(fileno=fds[0]), "an input template", lambda: ""),
                                     int(reply["pid"]), directory)
            try:
                loaded, _ = template.channel.receive(self.config.startup_timeout)
                if not loaded.get("ok"):
                    raise FactoryError(f"an input template could not decode its images: {loaded.get('error')}")
            except FactoryError:
                template.close()
                raise
        return template

    def _running_channel(self) -> Channel:
        if not self.running or self._channel is None:
            self.start()
        assert self._channel is not None
        return self._channel

    def stop(self) -> None:
        """Kill the factory (its kernels and templates die with it). Safe to call twice."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.process is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
            self.process = None
            self.pid = None

    def _describe(self) -> str:
        if self.process is None:
            return "not started"
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1)
        code = self.process.poll()
        state = "still running" if code is None else f"exit code {code}"
        return f"{state}; its log ends:\n{self.log_tail()}"

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return (self.root / "factory.log").read_bytes()[-chars:].decode("utf-8", "replace")
        except OSError:
            return ""


class Channel:
    """JSON lines over a Unix socket, with descriptors attached; errors say who is at the other end (``who``) and
    what became of it (``describe()``)."""

    def __init__(self, sock: socket.socket, who: str, describe: Callable[[], str]) -> None:
        self.socket = sock
        self.who = who
        self._describe = describe

    def send(self, message: dict, fds: list[int] | None = None) -> None:
        data = json.dumps(message).encode() + b"\n"
        try:
            sent = socket.send_fds(self.socket, [data], fds or [])
            self.socket.sendall(data[sent:])
        except OSError as exc:
            raise FactoryError(f"{self.who} is gone ({exc}) {self._describe()}") from exc

    def receive(self, timeout: float) -> tuple[dict, list[int]]:
        """One message and the descriptors that came with it; raises :class:`FactoryError` past ``timeout``."""
        data, fds = b"", []
        until = time.monotonic() + timeout
        while not data.endswith(b"\n"):
            left = until - time.monotonic()
            if left <= 0 or not select.select([self.socket], [], [], left)[0]:
                raise FactoryError(f"{self.who} did not answer within {timeout:g} s {self._describe()}")
            chunk, more, _, _ = socket.recv_fds(self.socket, 1 << 20, 4)
            fds += more
            if not chunk:
                raise FactoryError(f"{self.who} exited {self._describe()}")
            data += chunk
        return json.loads(data), fds

    def close(self) -> None:
        self.socket.close()


class InputTemplate:
    """A process forked from the factory that holds one task's input images decoded and forks the kernels of that
    task's episodes: a GRPO group decodes its images once and its kernels share their pages. Kernels forked by a
    template die with it, so the engine closes one only when none of its kernels is left (``users``)."""

    def __init__(self, channel: Channel, pid: int, directory: Path) -> None:
        self.channel = channel
        self.pid = pid
        self.directory = directory
        """Its inputs (links to the task's files), removed with it."""
        self.users = 0
        self._pidfd = os.pidfd_open(pid)

    @property
    def alive(self) -> bool:
        return self._pidfd is not None and not select.select([self._pidfd], [], [], 0)[0]

    def close(self) -> None:
        """Kill the template (with any kernel it forked) and remove its inputs. Safe to call twice."""
        self.channel.close()
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            os.close(self._pidfd)
            self._pidfd = None
        shutil.rmtree(self.directory, ignore_errors=True)


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
    """A forked kernel seen from the engine: the kernel and its init, by pidfd (killing the init ends the kernel's
    namespace).

    It answers like :class:`subprocess.Popen` (``pid``, ``poll``, ``kill``, ``wait``) although the engine is
    not its parent: a kernel that ended stays a zombie of its init, and its exit status is read from ``/proc``.
    """

    def __init__(self, init: int, kernel: int) -> None:
        self.pid = kernel
        self.pidfd: int | None = os.pidfd_open(kernel)
        self._init_fd: int | None = os.pidfd_open(init)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and (self.pidfd is None or select.select([self.pidfd], [], [], 0)[0]):
            self.returncode = self._exit_code()
        return self.returncode

    def _exit_code(self) -> int:
        """The ended kernel's exit code (negative: the signal that killed it), from its zombie's ``stat``."""
        try:
            with open(f"/proc/{self.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            if fields[0] == "Z":
                return os.waitstatus_to_exitcode(int(fields[-1]))
        except (OSError, IndexError, ValueError):
            pass
        return -signal.SIGKILL  # gone with its namespace: killed from outside

    def kill(self) -> None:
        """SIGKILL the kernel and its init (whose death ends the kernel's namespace)."""
        for fd in (self.pidfd, self._init_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        if self.pidfd is not None and not select.select([self.pidfd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired("forked kernel", timeout or 0)
        return self.poll()  # type: ignore[return-value]

    def close(self) -> None:
        for fd in (self.pidfd, self._init_fd):
            if fd is not None:
                os.close(fd)
        self.pidfd = self._init_fd = None

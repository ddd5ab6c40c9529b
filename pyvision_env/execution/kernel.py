"""One sandboxed ipykernel process and its single client, driven from an asyncio loop.

:class:`Kernel` starts the process (inside bubblewrap when available), waits until it is ready and has
run the preload statements, and executes cells with three things watched at once: the cell's
messages (filtered by the request's ``msg_id``), its deadline, and the process itself (a death watch
on a pidfd, so a dying kernel is reported at once instead of at the deadline). Messages from the
kernel are untrusted: a forged ``idle`` does not end a cell (its ``execute_reply`` must arrive too),
and no deadline or budget depends on what the kernel says.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import zmq
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.connect import write_connection_file

from .factory import FactoryError, ForkedProcess, InputTemplate, KernelFactory
from .limits import KERNEL_FLAGS, ExecutionLimits, SandboxConfig
from .output import OutputCollector, PendingImage
from .records import CellResult, CellStatus
from .sandbox import Cgroup, CgroupManager, bubblewrap_options, kernel_environment, make_preexec, options_file

T = TypeVar("T")
IDLE_WAIT = 0.5
"""Seconds to wait for the ``idle`` status after the reply (it can be lost under an output flood)."""
OUTPUT_STOP_DELAY = 0.1
"""Seconds a cell past its output budget may still take to reply before it is interrupted. What it sends meanwhile
is dropped anyway, and a cell that has just finished (a flood that ends at once) replies within them: an interrupt
landing as the kernel sends its reply can lose that reply, and then the kernel has to be killed."""
POLL_WITHOUT_PIDFD = 0.2
DRAIN_BATCH = 64
MAX_EXPRESSION_CHARS = 256 * 1024
"""Longer text forms of ``expressions`` are dropped (the kernel's code could make them any size)."""
"""Messages read from a socket at a time: a kernel that floods faster than they are read must not keep the
loop from its deadline, budget and death checks (nor from other sessions)."""


class KernelStartError(RuntimeError):
    """A kernel did not become ready (the message includes the tail of its log)."""


class KernelDiedError(RuntimeError):
    """The kernel process is gone; the caller should start another."""


def _launch(command: list[str], env: dict[str, str], directory: Path, limits: ExecutionLimits,
            cgroups: CgroupManager | None, kernel_id: str, sandbox_options: list[str] | None,
            factory: KernelFactory | None, template: InputTemplate | None) -> tuple[KernelProcess, Cgroup | None]:
    """Create the kernel's cgroup and the process (runs on the spawner thread, off the event loop): forked by
    ``factory`` (by ``template`` when given) or else a new interpreter, inside bubblewrap with ``sandbox_options``
    when given. Bubblewrap, the sandbox's PID 1, gets the kernel's own environment and its options through a file
    descriptor: a cell reading ``/proc/1`` learns nothing of the host."""
    cgroup = cgroups.create(f"k-{kernel_id}", limits) if cgroups is not None else None
    cgroup_fds = cgroup.open_procs() if cgroup is not None else []
    inherited: tuple[int, ...] = ()  # descriptors the child keeps open
    if sandbox_options is not None:
        inherited = (options_file(sandbox_options),)
        command = [shutil.which("bwrap") or "bwrap", "--args", str(inherited[0]), "--", *command]
    log = open(directory / "kernel.log", "wb")  # noqa: SIM115 - handed to the child
    try:
        if factory is not None:
            return factory.fork(directory, directory / "kernel.json", limits, cgroup_fds, template), cgroup
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            cwd=str(directory / "work"), start_new_session=True, close_fds=True,
            pass_fds=inherited,
            preexec_fn=make_preexec(limits, cgroup_fds, die_with_parent=True))
    except (OSError, FactoryError) as exc:
        _remove_tree(directory)
        if cgroup is not None:
            cgroup.remove()
        raise KernelStartError(f"could not launch the kernel: {exc}") from exc
    finally:
        log.close()
        for fd in (*cgroup_fds, *inherited):
            os.close(fd)
    return process, cgroup


def _discard_launch(launch: asyncio.Future, directory: Path) -> None:
    """Kill what a launch started after its caller was cancelled."""
    if launch.cancelled() or launch.exception() is not None:
        return
    process, cgroup = launch.result()
    _kill_process(process)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
    if isinstance(process, ForkedProcess):
        process.close()
    if cgroup is not None:
        cgroup.remove()
    _remove_tree(directory)


_spawn_executor: concurrent.futures.ThreadPoolExecutor | None = None


def _spawner() -> concurrent.futures.ThreadPoolExecutor:
    """One long-lived thread forks every kernel: a fork (with ``preexec_fn``, a full copy of this process)
    costs tens of milliseconds that must not stall the event loop, and the kernels' parent-death signal
    is tied to the forking thread, which therefore lives as long as the process."""
    global _spawn_executor
    if _spawn_executor is None:
        _spawn_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pyvision-spawn")
    return _spawn_executor


async def run_on_spawner(function: Callable[[], T]) -> T:
    """Run a blocking call on the spawner thread (the kernels' and the factory's parent-death signals are tied
    to it)."""
    return await asyncio.get_running_loop().run_in_executor(_spawner(), function)


def _forget_spawner() -> None:
    global _spawn_executor
    _spawn_executor = None  # a forked child has no spawner thread; it makes its own on first use


os.register_at_fork(after_in_child=_forget_spawner)


@dataclass
class CellOutcome:
    """A cell's result plus the images still to decode (decoding is kept off the event loop)."""

    result: CellResult
    pending_images: list[PendingImage] = field(default_factory=list)


KernelProcess = subprocess.Popen | ForkedProcess
"""A kernel's process: a new interpreter (of which the engine is the parent) or a kernel forked by the factory."""


def _kill_process(process: KernelProcess) -> None:
    """SIGKILL the kernel: a new interpreter with its whole session (it runs in one of its own)."""
    if isinstance(process, subprocess.Popen):
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        process.kill()


class Kernel:
    """A kernel process, its directory and its client. Create with :meth:`start`; end with :meth:`kill`."""

    def __init__(self, kernel_id: str, directory: Path, process: KernelProcess, client: AsyncKernelClient,
                 cgroup: Cgroup | None, sandboxed: bool) -> None:
        self.id = kernel_id
        self.directory = directory
        self.work_dir = directory / "work"
        self.inputs_dir = directory / "inputs"
        self.process = process
        self.client = client
        self.cgroup = cgroup
        self.sandboxed = sandboxed
        self.template: InputTemplate | None = None
        """The input template that forked it (its images are bound without decoding)."""
        self.cells_run = 0
        self._killed = False
        self._pidfd = _pidfd_open(process.pid)
        self._shell = client.shell_channel.socket
        self._iopub = client.iopub_channel.socket
        self._control = client.control_channel.socket
        self._shell_now = zmq.Socket.shadow(self._shell.underlying)  # for receiving without waiting
        self._iopub_now = zmq.Socket.shadow(self._iopub.underlying)
        self._control_now = zmq.Socket.shadow(self._control.underlying)
        self._poller = zmq.asyncio.Poller()
        self._poller.register(self._shell, zmq.POLLIN)
        self._poller.register(self._iopub, zmq.POLLIN)
        if self._pidfd is not None:
            self._poller.register(self._pidfd, zmq.POLLIN)

    # --- lifecycle -------------------------------------------------------------------------------

    @classmethod
    async def start(cls, *, root: Path, config: SandboxConfig, limits: ExecutionLimits,
                    context: zmq.asyncio.Context, cgroups: CgroupManager | None, sandboxed: bool,
                    factory: KernelFactory | None = None, template: InputTemplate | None = None) -> Kernel:
        """Launch a kernel (forked by ``factory``, or by its input ``template``, when given), wait until it answers,
        run the preload. Raises :class:`KernelStartError`."""
        kernel_id = uuid.uuid4().hex[:12]
        directory = root / f"k-{kernel_id}"
        directory.mkdir(mode=0o700)
        (directory / "work").mkdir()
        (directory / "inputs").mkdir()
        connection_file = directory / "kernel.json"
        write_connection_file(str(connection_file), transport="ipc", ip=str(directory / "ipc"),
                              key=secrets.token_hex(32).encode())
        python = config.python or sys.executable
        command = [python, "-m", "ipykernel_launcher", "-f", str(connection_file), *KERNEL_FLAGS]
        env = kernel_environment(config, home=str(directory / "work"))
        sandbox_options = bubblewrap_options(directory, directory / "work", directory / "inputs", config, limits,
                                             env) if sandboxed and factory is None else None
        launch = asyncio.get_running_loop().run_in_executor(
            _spawner(), _launch, command, env, directory, limits, cgroups, kernel_id, sandbox_options, factory,
            template)
        try:
            process, cgroup = await asyncio.shield(launch)
        except asyncio.CancelledError:
            launch.add_done_callback(lambda done: _discard_launch(done, directory))
            raise
        client = AsyncKernelClient(context=context)
        client.load_connection_file(str(connection_file))
        client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=True)
        kernel = cls(kernel_id, directory, process, client, cgroup, sandboxed)
        kernel.template = template
        try:
            await asyncio.wait_for(kernel._wait_ready(), timeout=config.startup_timeout)
            if factory is None:  # a forked kernel ran the setup itself, compiled once by the factory
                outcome = await kernel.execute(config.setup_code(), limits.replace(cell_timeout=config.startup_timeout),
                                               silent=True)
                if not outcome.result.ok:
                    raise KernelStartError(f"the kernel's preload failed: {outcome.result.error_name}: "
                                           f"{outcome.result.error_value}\n{outcome.result.traceback[-2000:]}")
        except (asyncio.TimeoutError, KernelDiedError, KernelStartError) as exc:
            log_tail = kernel.log_tail()
            await kernel.kill()
            reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else str(exc)
            raise KernelStartError(f"kernel {kernel_id} failed to start: {reason}\n{log_tail}") from exc
        except BaseException:
            await kernel.kill()
            raise
        return kernel

    async def _wait_ready(self) -> None:
        """Send ``kernel_info`` until the kernel replies (its sockets may not be bound yet at first)."""
        while True:
            msg_id = self.client.kernel_info()
            until = time.monotonic() + 0.5
            while time.monotonic() < until:
                if await self._wait_events(until - time.monotonic()) and self.exited:
                    raise KernelDiedError(f"kernel process exited during start-up ({self.exit_description()})")
                for msg in self._drain(self._shell_now):
                    if msg["parent_header"].get("msg_id") == msg_id:
                        self._drain(self._iopub_now)
                        return
                self._drain(self._iopub_now)
            if self.exited:
                raise KernelDiedError(f"kernel process exited during start-up ({self.exit_description()})")

    @property
    def exited(self) -> bool:
        return self.process.poll() is not None

    def exit_description(self) -> str:
        code = self.process.poll()
        if code is None:
            return "still running"
        if code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        if code > 128 and self.sandboxed and isinstance(self.process, subprocess.Popen):
            # bwrap reports a signalled child as 128 + signal
            try:
                return f"killed by signal {signal.Signals(code - 128).name}"
            except ValueError:
                pass
        return f"exit code {code}"

    def log_tail(self, chars: int = 2000) -> str:
        try:
            with open(self.directory / "kernel.log", "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - chars))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def interrupt(self) -> None:
        """Interrupt the running cell over the control channel (a signal would kill a bwrap'd kernel)."""
        self._drain(self._control_now)
        self.client.control_channel.send(self.client.session.msg("interrupt_request", {}))

    async def kill(self) -> None:
        """Kill the process tree at once, close the client, remove the directory and cgroup. Idempotent."""
        if self._killed:
            return
        self._send_kill()
        await _wait_until(lambda: self.process.poll() is not None, timeout=5.0)  # reaps it, off the loop
        if self.cgroup is not None:  # killed processes of the namespace are reaped by init a moment later
            cgroup = self.cgroup
            await _wait_until(lambda: not cgroup.pids(), timeout=2.0)
        self._close_resources()

    def kill_now(self) -> None:
        """Synchronous kill for finalizers and ``atexit`` (no event loop needed)."""
        if self._killed:
            return
        self._send_kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        if self.cgroup is not None:
            self.cgroup.wait_empty(timeout=2.0)
        self._close_resources(close_sockets=False)

    def _send_kill(self) -> None:
        """SIGKILL the kernel's session (the kernel runs in one of its own), the process, and its cgroup."""
        self._killed = True
        _kill_process(self.process)
        if self.cgroup is not None:
            self.cgroup.kill_all()

    def _close_resources(self, close_sockets: bool = True) -> None:
        if close_sockets:
            self.client.stop_channels()
        if self._pidfd is not None:
            with contextlib.suppress(KeyError):
                self._poller.unregister(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if isinstance(self.process, ForkedProcess):
            self.process.close()
        if self.cgroup is not None:
            self.cgroup.remove()
        _remove_tree(self.directory)

    @property
    def killed(self) -> bool:
        return self._killed

    # --- cells -----------------------------------------------------------------------------------

    async def execute(self, code: str, limits: ExecutionLimits, *, timeout: float | None = None,
                      images_allowed: int | None = None, silent: bool = False,
                      expressions: Mapping[str, str] | None = None) -> CellOutcome:
        """Run one cell under ``limits``; never raises for anything the cell does.

        ``expressions`` are evaluated in the kernel after the cell when it succeeded (Jupyter's
        ``user_expressions``); their text forms come back in ``result.expressions``.

        ``timeout`` overrides ``limits.cell_timeout`` (the episode budget may be shorter). If the caller is
        cancelled mid-cell the kernel is killed, since its state can no longer be known.
        """
        if self._killed or self.exited:
            raise KernelDiedError(f"kernel {self.id} is not running ({self.exit_description()})")
        started = time.monotonic()
        deadline = started + (limits.cell_timeout if timeout is None else timeout)
        collector = OutputCollector(limits, images_allowed=images_allowed)
        msg_id = self.client.execute(code, silent=silent, store_history=not silent, allow_stdin=False,
                                     stop_on_error=False, user_expressions=dict(expressions or {}))
        self.cells_run += 1
        reply: dict | None = None
        replied_at = 0.0
        idle = False
        stop: CellStatus | None = None
        kill_at = 0.0
        output_stop_at = math.inf  # when a cell past its output budget is interrupted
        crashed = False
        try:
            while True:
                now = time.monotonic()
                if collector.over_budget and output_stop_at == math.inf:
                    output_stop_at = now + OUTPUT_STOP_DELAY
                # A cell that has replied is over: interrupting it now would hit the next cell instead.
                if stop is None and reply is None and (now >= deadline or now >= output_stop_at):
                    stop = CellStatus.TIMEOUT if now >= deadline else CellStatus.OUTPUT_LIMIT
                    self.interrupt()
                    kill_at = now + limits.interrupt_grace
                if reply is not None and (idle or now >= replied_at + IDLE_WAIT):
                    if stop is not None:  # the reply may have crossed our interrupt: let that land first
                        await self._wait_interrupt_reply(kill_at)
                    break
                if stop is not None and now >= kill_at:
                    await self.kill()
                    break
                wake_at = kill_at if stop is not None else min(deadline, output_stop_at)
                if reply is not None:
                    wake_at = min(wake_at, replied_at + IDLE_WAIT)
                await self._wait_events(wake_at - now)
                for msg in self._drain(self._iopub_now):
                    if msg["parent_header"].get("msg_id") != msg_id:
                        continue  # a stale message from an earlier cell or a leftover thread
                    if msg["msg_type"] == "status":
                        idle = idle or msg["content"].get("execution_state") == "idle"
                    else:
                        collector.add(msg["msg_type"], msg["content"])
                for msg in self._drain(self._shell_now):
                    if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_reply":
                        reply, replied_at = msg["content"], time.monotonic()
                if reply is None and self.exited:
                    crashed = True
                    break
        except asyncio.CancelledError:
            await asyncio.shield(self.kill())
            raise
        duration = time.monotonic() - started
        return self._outcome(collector, reply, stop, crashed, duration)

    def _outcome(self, collector: OutputCollector, reply: dict | None, stop: CellStatus | None, crashed: bool,
                 duration: float) -> CellOutcome:
        notes = list(collector.notes)
        result = CellResult(status=CellStatus.OK, stdout=collector.stdout.text(), stderr=collector.stderr.text(),
                            result=collector.result, duration=duration, notes=notes,
                            truncated=collector.truncated or collector.stdout.truncated or collector.stderr.truncated)
        if collector.error is not None:
            result.error_name, result.error_value, result.traceback = collector.error
        for name, value in ((reply or {}).get("user_expressions") or {}).items():
            text = value.get("data", {}).get("text/plain") if isinstance(value, dict) else None
            if value.get("status") == "ok" and isinstance(text, str) and len(text) <= MAX_EXPRESSION_CHARS:
                result.expressions[name] = text
        if crashed:
            result.status, result.state_lost = CellStatus.CRASHED, True
            result.error_name = result.error_name or "KernelDied"
            result.error_value = result.error_value or f"the kernel died ({self.exit_description()})"
            notes.append(f"the kernel died ({self.exit_description()}): kernel restarted, state lost")
        elif stop is not None:
            result.status = stop
            result.state_lost = self._killed
            what = ("exceeded its time limit" if stop is CellStatus.TIMEOUT
                    else f"sent more than {collector.limits.max_output_bytes} bytes of output")
            notes.append(f"the cell {what} and was "
                         + ("killed: kernel restarted, state lost" if self._killed else "interrupted"))
            result.truncated = result.truncated or stop is CellStatus.OUTPUT_LIMIT
        elif reply is not None and reply.get("status") != "ok":
            result.status = CellStatus.ERROR
            if not result.error_name:
                result.error_name = str(reply.get("ename", "Error"))[:200] if reply.get("status") == "error" \
                    else "Aborted"
                result.error_value = str(reply.get("evalue", ""))[:2000]
        return CellOutcome(result, collector.images)

    # --- messaging -------------------------------------------------------------------------------

    async def _wait_interrupt_reply(self, until: float) -> None:
        """Wait (until ``until``) for the kernel to answer our interrupt: its SIGINT has then been raised,
        while the kernel is between cells, and cannot abort the next cell."""
        while True:
            if any(msg["msg_type"] == "interrupt_reply" for msg in self._drain(self._control_now)):
                return
            left = until - time.monotonic()
            if left <= 0:
                return
            await self._control.poll(int(left * 1000) + 1)

    async def _wait_events(self, timeout: float) -> bool:
        """Wait until a message arrives, the process exits, or ``timeout`` passes. True if anything happened."""
        timeout = max(0.0, timeout)
        if self._pidfd is None:
            timeout = min(timeout, POLL_WITHOUT_PIDFD)
        events = await self._poller.poll(int(timeout * 1000) + 1)
        return bool(events)

    def _drain(self, socket: zmq.Socket, limit: int = DRAIN_BATCH) -> list[dict]:
        """Messages waiting on ``socket`` (at most ``limit``), deserialised; malformed ones are skipped."""
        messages = []
        session = self.client.session
        for _ in range(limit):
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:  # zmq.Again: nothing more waiting
                break
            try:
                _, parts = session.feed_identities(frames)
                messages.append(session.deserialize(parts))
            except Exception:  # noqa: BLE001 - a forged or broken message is dropped, not fatal
                continue
        return messages


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


async def _wait_until(done: Callable[[], bool], timeout: float) -> None:
    """Poll ``done`` with a growing pause (1 ms to 50 ms) until it is true or ``timeout`` passes."""
    until = time.monotonic() + timeout
    delay = 0.001
    while not done() and time.monotonic() < until:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

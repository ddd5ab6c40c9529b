"""The engine's supply of kernels: spare kernels started ahead of demand, under a global cap on live kernels.

Starting a kernel (and importing numpy, PIL and matplotlib in it) takes about a second; handing out a
kernel that is already waiting takes well under a millisecond. The supply keeps ``spares`` kernels ready
plus one per caller waiting in :meth:`KernelSupply.acquire`, never more than ``max_kernels`` alive in all
(ready, starting and in use). Every kernel is used for one episode only and then killed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from .kernel import Kernel, KernelStartError

log = logging.getLogger(__name__)


class KernelSupply:
    """Hands out fresh kernels; see the module docstring. All methods run on one event loop."""

    def __init__(self, start_kernel: Callable[[], Awaitable[Kernel]], spares: int, max_kernels: int) -> None:
        if spares < 0 or max_kernels < 1:
            raise ValueError(f"spare kernels must be >= 0 and max_kernels >= 1, got {spares} and {max_kernels}")
        self._start_kernel = start_kernel
        self.spares = min(spares, max_kernels)
        self.max_kernels = max_kernels
        self.live: set[Kernel] = set()
        self._ready: deque[Kernel] = deque()
        self._starting = 0
        self._waiters = 0
        self._errors: deque[KernelStartError] = deque()
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
        self.started = 0
        self.failed = 0
        self.last_error: KernelStartError | None = None

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    @property
    def live_count(self) -> int:
        """Kernels alive or being started (what the cap counts)."""
        return len(self.live) + self._starting

    def fill(self) -> None:
        """Start kernels until ``spares`` are ready or starting (and waiters are served), within the cap."""
        if self._closed:
            return
        wanted = self.spares + self._waiters - len(self._ready) - self._starting
        for _ in range(min(wanted, self.max_kernels - self.live_count)):
            self._starting += 1
            task = asyncio.get_running_loop().create_task(self._start_one())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def wait_ready(self, count: int | None = None) -> None:
        """Wait until ``count`` (default: ``spares``) kernels are ready; for warm-up and benchmarks."""
        count = self.spares if count is None else count
        failed_before = self.failed
        async with self._changed:
            self.fill()
            await self._changed.wait_for(lambda: len(self._ready) >= count or self.failed > failed_before)
        if len(self._ready) < count:
            raise KernelStartError(f"the engine could not start {count} kernels: {self.last_error}")

    async def acquire(self) -> Kernel:
        """A fresh, ready kernel; waits while the cap is reached. Raises :class:`KernelStartError`."""
        if self._closed:
            raise RuntimeError("the kernel supply is closed")
        self._waiters += 1
        try:
            async with self._changed:
                while True:
                    self.fill()
                    while self._ready:
                        kernel = self._ready.popleft()
                        if not kernel.exited:
                            return kernel
                        await self._discard(kernel)
                    if self._errors:
                        raise self._errors.popleft()
                    if self._closed:
                        raise RuntimeError("the kernel supply was closed while waiting for a kernel")
                    await self._changed.wait()
        finally:
            self._waiters -= 1
            if not self._closed:
                self.fill()

    async def start_dedicated(self, start_kernel: Callable[[], Awaitable[Kernel]]) -> Kernel:
        """A kernel made by ``start_kernel`` for one caller (not a spare), under the same cap: a spare kernel is
        given up if the cap leaves no room. Raises :class:`KernelStartError`."""
        async with self._changed:
            while self.live_count >= self.max_kernels and not self._closed:
                if self._ready:
                    await self._discard(self._ready.popleft())
                    continue
                await self._changed.wait()
            if self._closed:
                raise RuntimeError("the kernel supply is closed")
            self._starting += 1
        try:
            kernel = await start_kernel()
        except BaseException:
            async with self._changed:
                self._starting -= 1
                self._changed.notify_all()
            raise
        self.started += 1
        async with self._changed:
            self._starting -= 1
            self.live.add(kernel)
            self._changed.notify_all()
        if self._closed:
            await self._discard(kernel)
            raise RuntimeError("the kernel supply was closed while a kernel started")
        return kernel

    async def release(self, kernel: Kernel) -> None:
        """Kill a used kernel at once and free its place under the cap."""
        await self._discard(kernel)
        async with self._changed:
            self.fill()
            self._changed.notify_all()

    async def close(self) -> None:
        """Kill every kernel, ready or in use, and stop starting new ones."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(kernel.kill() for kernel in list(self.live)), return_exceptions=True)
        self.live.clear()
        self._ready.clear()
        async with self._changed:
            self._changed.notify_all()

    async def _discard(self, kernel: Kernel) -> None:
        await kernel.kill()
        self.live.discard(kernel)

    async def _start_one(self) -> None:
        try:
            kernel = await self._start_kernel()
        except KernelStartError as exc:
            self.failed += 1
            self.last_error = exc
            log.warning("%s", exc)
            async with self._changed:
                self._starting -= 1
                if self._waiters:
                    self._errors.append(exc)
                self._changed.notify_all()
            return
        except BaseException:
            self._starting -= 1
            raise
        self.started += 1
        async with self._changed:
            self._starting -= 1
            self.live.add(kernel)
            if self._closed:
                await self._discard(kernel)
            else:
                self._ready.append(kernel)
            self._changed.notify_all()

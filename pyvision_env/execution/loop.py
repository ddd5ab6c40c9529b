"""An asyncio event loop in a daemon thread, driven from other threads (the engine's and the Ray pool's).

Example::

    loop = LoopThread("my-loop")
    loop.run_coroutine(asyncio.sleep(0.1, result=3))     # -> 3
    future = loop.submit(asyncio.sleep(0.1, result=4))   # a concurrent.futures.Future
    loop.close()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """Runs an event loop forever in a daemon thread named ``name``; owned by the process that made it."""

    def __init__(self, name: str, owner_label: str = "this loop") -> None:
        self.owner_label = owner_label
        self.owner = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self.loop.is_closed()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coroutine`` on the loop without waiting; from another event loop, await
        ``asyncio.wrap_future(loop.submit(coroutine))``."""
        if self.loop.is_closed():
            coroutine.close()
            raise RuntimeError(f"{self.owner_label} is closed")
        if os.getpid() != self.owner:
            coroutine.close()
            raise RuntimeError(f"{self.owner_label} belongs to process {self.owner}; a forked child must start its "
                               "own")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run_coroutine(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the loop and wait for its result (cancelled on a timeout or Ctrl-C)."""
        future = self.submit(coroutine)
        try:
            return future.result(timeout)
        except (KeyboardInterrupt, concurrent.futures.TimeoutError):
            future.cancel()
            raise

    def close(self) -> None:
        """Stop the loop (pending callbacks are dropped) and close it once its thread has ended."""
        if self.loop.is_closed() or os.getpid() != self.owner:
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()

"""One worker thread per plugin for its synchronous calls (getMatchingCost):
a call that blocks holds neither the shared event loop nor the plugin's
actor, and one past its deadline is interrupted and its thread retired."""

import asyncio
import concurrent.futures
import threading
import time

import luna_matcher
from luna_plugins.errors import HostTimeout

# plugin name -> its worker
_workers = {}


class _Call:
    """One synchronous call, as its worker thread runs it."""

    __slots__ = ("fn", "thread", "started", "finished")

    def __init__(self, fn):
        self.fn = fn
        self.thread = None
        self.started = None
        self.finished = False

    def __call__(self):
        self.thread, self.started = threading.get_ident(), time.perf_counter()
        try:
            return self.fn()
        finally:
            self.finished = True

    def interrupt(self):
        """Raise HostTimeout in the thread running the call, if it still runs.
        Called on the loop's thread, holding the GIL: the call cannot finish in between."""
        if self.thread is not None and not self.finished:
            luna_matcher._interrupt(self.thread, HostTimeout)


class _Worker:
    def __init__(self, name):
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"plugin-{name}")
        self.calls = set()


def retire(name):
    """Stop the worker of `name`: queued calls are cancelled, a running one interrupted."""
    worker = _workers.pop(name, None)
    if worker is None:
        return
    worker.executor.shutdown(wait=False, cancel_futures=True)
    for call in list(worker.calls):
        call.interrupt()


async def run(name, fn, timeout, what):
    """fn() on the worker thread of plugin `name`, within `timeout` seconds of
    its own running time (time queued behind another call is not counted)."""
    worker = _workers.get(name) or _workers.setdefault(name, _Worker(name))
    call = _Call(fn)
    worker.calls.add(call)
    future = asyncio.wrap_future(worker.executor.submit(call))
    try:
        while not future.done():
            ran = 0.0 if call.started is None or call.finished else time.perf_counter() - call.started
            if ran >= timeout:
                future.cancel()
                retire(name)
                raise HostTimeout(f"{what} took longer than {timeout:g}s")
            await asyncio.wait((future,), timeout=timeout - ran)
        return future.result()
    finally:
        worker.calls.discard(call)

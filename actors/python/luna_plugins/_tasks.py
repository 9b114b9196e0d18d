"""Plugin tasks on the shared event loop: which plugin owns each, how long
each step of it held the loop, which died with an exception nobody watches,
and deadlines that count only the calling plugin's own time."""

import asyncio
import collections.abc
import time
import traceback

import luna_matcher
from luna_plugins import _routes
from luna_plugins.errors import HostTimeout

# (plugin, generation) -> its live tasks
live = {}
# Seconds the steps of plugin tasks held the loop: all told, and per plugin name.
_held_total = 0.0
_held = {}
# The owner, (plugin, generation), of the task step running now, if any, and
# the serial number of that step.
holder = None
serial = 0
_clock = time.perf_counter


def format_traceback(error):
    return "".join(traceback.format_exception(error)).rstrip()


class _Account:
    __slots__ = ("held",)

    def __init__(self):
        self.held = 0.0


class _Steps(collections.abc.Coroutine):
    """A plugin coroutine whose every step is timed and charged to its owner."""

    __slots__ = ("_coro", "_owner", "_account")

    def __init__(self, coro, owner):
        self._coro = coro
        self._owner = owner
        self._account = _held.get(owner[0]) or _held.setdefault(owner[0], _Account())

    def send(self, value):
        global holder, serial, _held_total
        holder, serial = self._owner, serial + 1
        start = _clock()
        try:
            return self._coro.send(value)
        finally:
            spent = _clock() - start
            holder = None
            self._account.held += spent
            _held_total += spent

    def throw(self, typ, val=None, tb=None):
        global holder, serial, _held_total
        holder, serial = self._owner, serial + 1
        start = _clock()
        try:
            return self._coro.throw(typ) if val is None and tb is None else self._coro.throw(typ, val, tb)
        finally:
            spent = _clock() - start
            holder = None
            self._account.held += spent
            _held_total += spent

    def close(self):
        return self._coro.close()

    def __await__(self):
        return self._coro.__await__()

    def __getattr__(self, name):
        # cr_frame, __qualname__, ...: what asyncio shows of a task's coroutine.
        return getattr(self._coro, name)


class PluginTask(asyncio.Task):
    """A task plugin code created. It counts who watches it (awaits, gather,
    done callbacks), so one that dies with nobody watching is reported."""

    def __init__(self, coro, *, owner, loop=None, **kwargs):
        super().__init__(_Steps(coro, owner), loop=loop, **kwargs)
        self.owner = owner
        self.watchers = 0
        live.setdefault(owner, set()).add(self)
        super().add_done_callback(_finished)

    def add_done_callback(self, fn, *, context=None):
        self.watchers += 1
        super().add_done_callback(fn, context=context)

    def remove_done_callback(self, fn):
        removed = super().remove_done_callback(fn)
        self.watchers -= removed
        return removed


def task_factory(loop, coro, **kwargs):
    context = kwargs.get("context")
    owner = context.get(_routes.current_plugin) if context is not None else _routes.current_plugin.get()
    if owner is None:
        return asyncio.Task(coro, loop=loop, **kwargs)
    return PluginTask(coro, owner=owner, loop=loop, **kwargs)


def _finished(task):
    live.get(task.owner, set()).discard(task)
    if task.cancelled() or task.watchers > 0:
        return
    error = task.exception()
    if error is not None:
        luna_matcher._task_failed(task.owner[0], task.owner[1], f"{type(error).__name__}: {error}", format_traceback(error))


def cancel(owner, spare):
    """Cancel every task of plugin generation `owner` but `spare`."""
    for task in live.pop(owner, ()):
        if task is not spare:
            task.cancel()


def _others(name):
    """Seconds other plugins' steps have held the loop, all told."""
    account = _held.get(name)
    return _held_total - (account.held if account else 0.0)


def _watched(task):
    # The deadline reports what the task ended with: it did not die unseen.
    if not task.cancelled():
        task.exception()


def _overrun(what, timeout):
    return HostTimeout(f"{what} took longer than {timeout:g}s")


class _Deadline:
    """`timeout` seconds of the calling plugin's own time from now: while other
    plugins' code holds the loop, its clock stops. One timer, rescheduled
    by the time others held the loop; `expire()` runs when it is spent."""

    __slots__ = ("_loop", "_name", "_timeout", "_start", "_others", "_timer", "_expire", "expired")

    def __init__(self, timeout, expire):
        owner = _routes.current_plugin.get()
        self._loop = asyncio.get_running_loop()
        self._name = owner[0] if owner else None
        self._timeout, self._expire, self.expired = timeout, expire, False
        self._start, self._others = _clock(), _others(self._name)
        self._timer = self._loop.call_later(timeout, self._check)

    def _check(self):
        remaining = self._timeout - (_clock() - self._start - (_others(self._name) - self._others))
        if remaining > 0:
            self._timer = self._loop.call_later(remaining, self._check)
        else:
            self.expired = True
            self._expire()

    def cancel(self):
        self._timer.cancel()


async def within(awaitable, timeout, what):
    """Await `awaitable` for at most `timeout` seconds of the calling plugin's
    own time. On overrun the awaitable is cancelled and HostTimeout raised
    at once: the awaitable runs in a task of its own, left behind if it
    ignores the cancellation. For callers that wait as long as it runs."""
    task = asyncio.ensure_future(awaitable)
    task.add_done_callback(_watched)
    waiter = task.get_loop().create_future()

    def wake(*_):
        if not waiter.done():
            waiter.set_result(None)

    task.add_done_callback(wake)
    deadline = _Deadline(timeout, wake)
    try:
        await waiter
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        deadline.cancel()
    if not task.done():
        task.cancel()
        raise _overrun(what, timeout)
    return task.result()


async def bounded(coroutine, timeout, what):
    """`within` for callers that stop waiting on their own past the deadline
    (and a grace): the coroutine runs in the calling task, which the
    deadline cancels, so a call costs no task and no wait of its own. One
    that ignores the cancellation is left to that caller's deadline."""
    task = asyncio.current_task()
    deadline = _Deadline(timeout, task.cancel)
    try:
        result = await coroutine
    except asyncio.CancelledError:
        if deadline.expired and task.uncancel() == 0:
            raise _overrun(what, timeout) from None
        raise
    finally:
        deadline.cancel()
    if deadline.expired:  # it swallowed the cancellation
        task.uncancel()
        raise _overrun(what, timeout)
    return result


async def reporting(coroutine, report):
    """Await a host call's `coroutine` and hand its outcome to `report(ok,
    value)` in the task's last step, a loop turn before a done callback
    would. A cancellation goes on to the task, whose done callback reports it."""
    try:
        result = await coroutine
    except Exception as error:
        report(False, error)
    else:
        report(True, result)

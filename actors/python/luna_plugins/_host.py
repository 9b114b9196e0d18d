"""The host's side of the plugin runtime, called by the Rust bridge (one
typed Rust method per function here): loading plugins, running their
coroutines under the service's deadlines, and reporting what they do.
Plugins do not import this module."""

import asyncio
import contextvars
import importlib
import inspect
import json
import logging
import sys
import threading
import types
import urllib.parse

import luna_matcher
from luna_plugins import _matching, _routes, _tasks
from luna_plugins.base.monitoring import make_point
from luna_plugins.base.plugins_meta._base import BaseEventPlugin, BasePlugin
from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundHandler, BaseBackgroundPlugin, pluginHTTPResponse
from luna_plugins.errors import HostTimeout, MalformedResult
from luna_plugins.matcher_plugins.base_plugin import BaseMatcherPlugin

# Classes activated so far, by any plugin: one class object is activated once.
_activated = {}  # class -> plugin name
# Plugins load on their own threads; one at a time decides which classes it owns.
_load_lock = threading.Lock()
# Names of the active plugins.
_active = frozenset()
# The service's event loop.
_loop = None


class _HostLogHandler(logging.Handler):
    def emit(self, record):
        try:
            luna_matcher._log(record.levelno, record.name, self.format(record))
        except Exception:  # logging must never raise into a plugin
            pass


def install(loop, plugins_dir, service_paths, log_level, active):
    """Once, at start-up: the `plugins` package, the task factory, logging."""
    global _active, _loop
    _active = frozenset(active)
    _loop = loop
    package = types.ModuleType("plugins")
    package.__path__ = [plugins_dir]
    package.__package__ = "plugins"
    sys.modules["plugins"] = package
    _routes.service_paths = frozenset(service_paths)
    loop.set_task_factory(_tasks.task_factory)
    root = logging.getLogger()
    root.addHandler(_HostLogHandler())
    root.setLevel(log_level)
    luna_matcher.store = sys.modules["luna_matcher.store"] = _store_module()


def _store_module():
    """`luna_matcher.store`: async reads of the store, which run on the
    default executor's threads with the GIL released while they copy, and
    the revision of a list, read at once."""
    store = types.ModuleType("luna_matcher.store")

    async def get_face(face_id):
        """The face with its descriptor (bytes) and attributes, or None."""
        return await asyncio.get_running_loop().run_in_executor(None, luna_matcher._store_get_face, str(face_id))

    async def list_faces(list_id):
        """The faces of a list with their descriptors, or None for an unknown list."""
        return await asyncio.get_running_loop().run_in_executor(None, luna_matcher._store_list_faces, str(list_id))

    async def list_sets(list_id):
        """The faces of a list as {descriptor version: DescriptorSet} (each face
        under its id), built natively; None for an unknown list."""
        return await asyncio.get_running_loop().run_in_executor(None, luna_matcher._store_list_sets, str(list_id))

    def list_revision(list_id):
        """The revision of a list's members (an int), or None for an unknown
        list. Not a coroutine: a lookup, cheap enough for getMatchingCost."""
        return luna_matcher._store_list_revision(str(list_id))

    store.get_face = get_face
    store.list_faces = list_faces
    store.list_sets = list_sets
    store.list_revision = list_revision
    return store


def blocking_owner():
    """(plugin, generation, step) whose task step holds the event loop now, if
    any. Called from the watchdog thread while the loop is stuck."""
    holder = _tasks.holder
    return None if holder is None else (*holder, _tasks.serial)


def context(name, generation):
    """A context in which plugin code runs, so the tasks it makes are its own."""
    ctx = contextvars.copy_context()
    ctx.run(_routes.current_plugin.set, (name, generation))
    return ctx


class App:
    """The `app` a plugin is constructed with."""

    class Ctx:
        pass

    def __init__(self, name, config, service_name, service_url):
        self.name = service_name
        self.ctx = App.Ctx()
        self.ctx.logger = logging.getLogger(f"plugins.{name}")
        self.ctx.config = config
        self.ctx.serviceName = service_name
        self.ctx.serviceUrl = service_url
        self.ctx.pluginName = name


def _is_plugin_class(obj):
    return (
        isinstance(obj, type)
        and issubclass(obj, BasePlugin)
        and obj not in (BasePlugin, BaseEventPlugin, BaseBackgroundPlugin, BaseMatcherPlugin)
        and not issubclass(obj, BaseBackgroundHandler)
        and not inspect.isabstract(obj)
    )


def unload(name):
    """Forget a plugin: its module (so the next load imports it afresh),
    classes and routes. Its tasks end with `retire`."""
    with _load_lock:
        for module in [m for m in list(sys.modules) if m == f"plugins.{name}" or m.startswith(f"plugins.{name}.")]:
            sys.modules.pop(module, None)
        for cls in [c for c, owner in _activated.items() if owner == name]:
            del _activated[cls]
    _routes.drop(name)


async def retire(instances, timeout):
    """Close the instances of a failed generation, each within `timeout`, then
    cancel the tasks that generation left. Runs in that generation's context."""
    owner = _routes.current_plugin.get()
    for error, _ in await stop(instances, timeout):
        logging.getLogger(f"plugins.{owner[0]}").warning("close of a failed generation: %s", error)
    _tasks.cancel(owner, asyncio.current_task())


# Plugin code that asks for "the" event loop outside a coroutine (at import, in
# a constructor) gets the service's: both set it, as each call from Rust may
# come with a fresh thread state.


def discover(name):
    """Import `plugins.<name>`; its concrete plugin classes, each claimed for
    this plugin, as [(class, kind, "module.Class", eventName or None)].

    Raises what the import raised."""
    asyncio.set_event_loop(_loop)
    with _load_lock:
        module = importlib.import_module(f"plugins.{name}")
        classes = []
        for obj in vars(module).values():
            if _is_plugin_class(obj) and obj not in _activated and obj not in classes and _owner(obj) in (name, None):
                classes.append(obj)
        for cls in classes:
            _activated[cls] = name
    return [(cls, _kind(cls), f"{cls.__module__}.{cls.__qualname__}", _event_name(cls)) for cls in classes]


def construct(name, classes, config_json, service_name, service_url):
    """One instance of each class, constructed with the plugin's `app`. Raises what a constructor raised."""
    asyncio.set_event_loop(_loop)
    app = App(name, json.loads(config_json), service_name, service_url)
    return [cls(app) for cls in classes]


def _kind(cls):
    if issubclass(cls, BaseEventPlugin):
        return "event"
    if issubclass(cls, BaseMatcherPlugin):
        return "matching"
    return "background"


def _event_name(cls):
    name = getattr(cls, "eventName", None) if issubclass(cls, BaseEventPlugin) else None
    return None if name is None else str(name)


def _owner(cls):
    """The active plugin whose package defines `cls`, if any: a class imported
    from another active plugin is that plugin's, whichever loads first."""
    parts = (cls.__module__ or "").split(".")
    if len(parts) > 1 and parts[0] == "plugins" and parts[1] in _active:
        return parts[1]
    return None


def _describe(instance):
    cls = type(instance)
    return f"{cls.__module__}.{cls.__qualname__}"


def route_paths(name):
    return _routes.paths(name)


async def _call(method, *args):
    """A plugin method that may be sync or async, as a coroutine."""
    result = method(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _outcomes(awaitables):
    """Their outcomes (results or exceptions), run concurrently, as
    `gather(..., return_exceptions=True)` gives them. One alone, the usual
    case, is awaited without gather: a task fewer, and events are delivered
    per request."""
    if len(awaitables) != 1:
        return await asyncio.gather(*awaitables, return_exceptions=True)
    try:
        return [await awaitables[0]]
    except asyncio.CancelledError as error:
        if asyncio.current_task().cancelling():
            raise  # the caller itself is cancelled, as gather would be
        return [error]
    except Exception as error:
        return [error]


async def _each(instances, method, timeout, *args):
    """`method` of every instance, concurrently, each within `timeout`: their outcomes."""
    calls = [_tasks.within(_call(getattr(i, method), *args), timeout, f"{_describe(i)}.{method}") for i in instances]
    return await _outcomes(calls)


def _errors(outcomes, prefixes):
    """[(error, traceback)] of the outcomes that are exceptions."""
    return [(f"{p}{type(o).__name__}: {o}", _tasks.format_traceback(o)) for p, o in zip(prefixes, outcomes, strict=True) if isinstance(o, BaseException)]


async def start(instances, timeout):
    """`initialize()` every instance, each within `timeout`; raises the first failure."""
    for outcome in await _each(instances, "initialize", timeout):
        if isinstance(outcome, BaseException):
            raise outcome


async def stop(instances, timeout):
    """`close()` every instance, each within `timeout`; their errors."""
    outcomes = await _each(instances, "close", timeout)
    return _errors(outcomes, ["" for _ in instances])


async def deliver(instances, event_name, points, timeout):
    """Hand one event to each instance; their errors. A handler that overruns
    raises HostTimeout here, so the host restarts the plugin."""
    objects = [make_point(series, event_time, tags, fields) for series, event_time, tags, fields in points]

    def handle(instance):
        logger = instance.app.ctx.logger if getattr(instance, "app", None) else logging.getLogger("plugins")
        return _tasks.within(_call(instance.handleEvent, objects, logger), timeout, f"{_describe(instance)}.handleEvent on {event_name}")

    outcomes = await _outcomes([handle(i) for i in instances])
    for outcome in outcomes:
        if isinstance(outcome, HostTimeout):
            raise outcome
    return _errors(outcomes, [f"{_describe(i)}.handleEvent: " for i in instances])


class Request:
    """What a plugin route handler gets."""

    def __init__(self, method, path, query_string, headers, body, match_info):
        self.method = method
        self.path = path
        self.query_string = query_string
        self.query = dict(urllib.parse.parse_qsl(query_string, keep_blank_values=True))
        self.args = self.query
        self.headers = headers
        self.body = body
        self.match_info = match_info

    def json(self):
        return json.loads(self.body or b"null")


async def serve(template, match_info, method, path, query_string, headers, body, timeout):
    """Run the handler of a plugin route within `timeout`; (status, headers, body bytes).

    A method the route does not serve answers 405."""
    route = _routes.get(template)
    if route is None:
        return 404, {}, b""
    _, handler, methods, plugin = route
    request = Request(method, path, query_string, headers, body, match_info)
    verb = method.lower()
    if isinstance(handler, type) and issubclass(handler, BaseBackgroundHandler):
        call = getattr(handler(getattr(plugin, "app", None)), verb, None)
    else:
        call = handler if methods is None or verb in methods else None
    if call is None:
        return 405, {}, b""
    result = await _tasks.bounded(_call(call, request), timeout, f"route {method} {template}")
    if not isinstance(result, pluginHTTPResponse):
        result = pluginHTTPResponse(body=result if result is not None else "")
    try:
        return result.encode()
    except Exception as error:
        raise MalformedResult(f"the route's response cannot be sent: {type(error).__name__}: {error}") from error


def matching_costs(instances, requests):
    """For each sub-request, the cheapest (cost, index) among `instances`
    ([(index, instance)]), or None. Called on the plugin's worker thread,
    which keeps the deadline."""
    offers = []
    for data in requests:
        request = _matching.request(data)
        best = None
        for index, instance in instances:
            cost = _matching.cost(instance, request)
            if cost is not None and (best is None or cost < best[0]):
                best = (cost, index)
        offers.append(best)
    return offers


async def _answer(instance, request):
    return _matching.plain(await instance.match(request))


async def match(instance, data, timeout):
    """What the plugin's match() answered within `timeout`, as
    `_matching.plain` gives it; MalformedResult when it is not an answer."""
    return await _tasks.bounded(_answer(instance, _matching.request(data)), timeout, f"{_describe(instance)}.match")

"""The host's side of the plugin runtime, called by the Rust bridge: loading
plugins, running their coroutines under the service's rules, and reporting
what they do. Plugins do not import this module."""

import asyncio
import importlib
import inspect
import json
import logging
import sys
import threading
import types
import urllib.parse

import luna_matcher

from luna_plugins import _routes
from luna_plugins.base.monitoring import make_point
from luna_plugins.base.plugins_meta._base import BaseEventPlugin, BasePlugin
from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundHandler, BaseBackgroundPlugin, pluginHTTPResponse
from luna_plugins.matcher_plugins.base_plugin import BaseMatcherPlugin
from luna_plugins.matcher_plugins.base_struct import Face, FaceMatchResult, MatchRequest, MatchUnitType, Reference

# Classes activated so far, by any plugin: one class object is activated once.
_activated = {}  # class -> plugin name
# Plugins load on their own threads; one at a time decides which classes it owns.
_load_lock = threading.Lock()
# Names of the active plugins.
_active = frozenset()
# The service's event loop.
_loop = None
# Tasks created by plugin code: (plugin, generation) -> set of tasks
_tasks = {}


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
    loop.set_task_factory(_task_factory)
    root = logging.getLogger()
    root.addHandler(_HostLogHandler())
    root.setLevel(log_level)
    luna_matcher.store = sys.modules["luna_matcher.store"] = _store_module()


def _store_module():
    """`luna_matcher.store`: async reads of the store. The reads run on the
    default executor's threads, with the GIL released while they copy."""
    store = types.ModuleType("luna_matcher.store")

    async def get_face(face_id):
        """The face with its descriptor (bytes) and attributes, or None."""
        return await asyncio.get_running_loop().run_in_executor(None, luna_matcher._store_get_face, str(face_id))

    async def list_faces(list_id):
        """The faces of a list with their descriptors, or None for an unknown list."""
        return await asyncio.get_running_loop().run_in_executor(None, luna_matcher._store_list_faces, str(list_id))

    store.get_face = get_face
    store.list_faces = list_faces
    return store


def _task_factory(loop, coro, **kwargs):
    task = asyncio.Task(coro, loop=loop, **kwargs)
    owner = _routes.current_plugin.get()
    if owner is not None:
        _tasks.setdefault(owner, set()).add(task)
        task.add_done_callback(lambda t: _task_done(owner, t))
    return task


def _task_done(owner, task):
    _tasks.get(owner, set()).discard(task)
    if task.cancelled() or not task._log_traceback:
        return
    # A task whose error whoever awaits it (gather, a handler) retrieves is not
    # a death. Look again once those awaiting it have run.
    loop = task.get_loop()
    loop.call_soon(loop.call_soon, _report_if_unobserved, owner, task)


def _report_if_unobserved(owner, task):
    if task._log_traceback:
        error = task.exception()
        luna_matcher._task_failed(owner[0], owner[1], f"{type(error).__name__}: {error}")


def blocking_owner():
    """(plugin, generation) whose task holds the event loop now, if any. Called
    from the watchdog thread while the loop is stuck."""
    task = asyncio.current_task(_loop)
    if task is None:
        return None
    for owner, tasks in list(_tasks.items()):
        if task in tasks:
            return owner
    return None


def context(name, generation):
    """A context in which plugin code runs, so the tasks it makes are its own."""
    import contextvars

    ctx = contextvars.copy_context()
    ctx.run(_routes.current_plugin.set, (name, generation))
    return ctx


async def hosted(coro, timeout):
    """Run a plugin coroutine for the host: cancelled on the event loop when it overruns."""
    return await asyncio.wait_for(coro, timeout)


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
    """Forget a plugin: its module (so the next load imports it afresh), classes, routes, tasks.

    Called from the plugin's actor thread: the tasks are cancelled on the loop's own thread."""
    with _load_lock:
        for module in [m for m in list(sys.modules) if m == f"plugins.{name}" or m.startswith(f"plugins.{name}.")]:
            sys.modules.pop(module, None)
        for cls in [c for c, owner in _activated.items() if owner == name]:
            del _activated[cls]
    _routes.drop(name)
    _loop.call_soon_threadsafe(_cancel_tasks, name)


def _cancel_tasks(name):
    for owner in [o for o in _tasks if o[0] == name]:
        for task in _tasks.pop(owner):
            task.cancel()


def load(name, config, service_name, service_url):
    """Import `plugins.<name>` and construct each concrete plugin class in it.

    Returns [(instance, kind)]; raises what the import or a constructor raised."""
    # Plugin code that asks for "the" event loop outside a coroutine gets the service's.
    asyncio.set_event_loop(_loop)
    with _load_lock:
        module = importlib.import_module(f"plugins.{name}")
        classes = []
        for obj in vars(module).values():
            if _is_plugin_class(obj) and obj not in _activated and obj not in classes and _owner(obj) in (name, None):
                classes.append(obj)
        for cls in classes:
            _activated[cls] = name
    app = App(name, config, service_name, service_url)
    return [(cls(app), _kind(cls)) for cls in classes]


def _kind(cls):
    if issubclass(cls, BaseEventPlugin):
        return "event"
    if issubclass(cls, BaseMatcherPlugin):
        return "matching"
    return "background"


def _owner(cls):
    """The active plugin whose package defines `cls`, if any: a class imported
    from another active plugin is that plugin's, whichever loads first."""
    parts = (cls.__module__ or "").split(".")
    if len(parts) > 1 and parts[0] == "plugins" and parts[1] in _active:
        return parts[1]
    return None


def describe(instance):
    cls = type(instance)
    return f"{cls.__module__}.{cls.__qualname__}"


def event_name(instance):
    return getattr(instance, "eventName", None)


def route_paths(name):
    return _routes.paths(name)


async def deliver(instances, event_name, points, timeout):
    """Hand one event to each instance; return the errors as text. A handler
    that overruns raises TimeoutError here, so the host restarts the plugin."""
    objects = [make_point(series, event_time, tags, fields) for series, event_time, tags, fields in points]
    outcomes = await asyncio.gather(
        *[asyncio.wait_for(i.handleEvent(objects, i.app.ctx.logger if getattr(i, "app", None) else logging.getLogger("plugins")), timeout) for i in instances],
        return_exceptions=True,
    )
    errors = []
    for instance, outcome in zip(instances, outcomes):
        if isinstance(outcome, (asyncio.TimeoutError, TimeoutError)):
            raise TimeoutError(f"{describe(instance)}.handleEvent took longer than {timeout}s on {event_name}")
        if isinstance(outcome, BaseException):
            errors.append(f"{describe(instance)}.handleEvent: {type(outcome).__name__}: {outcome}")
    return errors


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


async def serve(template, match_info, method, path, query_string, headers, body):
    """Run the handler of a plugin route; return (status, headers, body bytes).

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
    result = call(request)
    if inspect.isawaitable(result):
        result = await result
    if not isinstance(result, pluginHTTPResponse):
        result = pluginHTTPResponse(body=result if result is not None else "")
    return result.encode()


def _match_request(data):
    r = data["reference"]
    reference = Reference(r["type"], r["id"], r["descriptor"], r["descriptor_version"])
    return MatchRequest(reference, json.loads(data["filters"]), data["targets"], data["limit"], data["threshold"], data["account_id"], data["request_id"])


def _admits(available, value):
    return value in {MatchUnitType(v) if v in MatchUnitType._value2member_map_ else v for v in available}


def matching_cost(instance, data):
    """The plugin's cost for a sub-request; None where its capabilities do not
    admit it or it declines (float("inf"))."""
    request = _match_request(data)
    if not (_admits(instance.availableReferenceTypes, request.reference.type)
            and _admits(instance.availableCandidateTypes, MatchUnitType.face)
            and "similarity" in instance.availableSortOrder):
        return None
    cost = float(instance.getMatchingCost(request))
    return None if cost != cost or cost == float("inf") else cost


async def match(instance, data):
    """[(face_id, similarity)] from the plugin's match(); TypeError when what
    it returned is not a list of FaceMatchResult."""
    results = await instance.match(_match_request(data))
    if not isinstance(results, (list, tuple)):
        raise TypeError(f"match() returned {type(results).__name__}, not a list of FaceMatchResult")
    out = []
    for r in results:
        if not isinstance(r, FaceMatchResult) or not isinstance(r.face, Face) or isinstance(r.similarity, bool) or not isinstance(r.similarity, (int, float)):
            raise TypeError(f"match() returned {r!r}, not a FaceMatchResult")
        out.append((r.face.face_id, float(r.similarity)))
    return out

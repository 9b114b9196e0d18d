"""Routes that background plugins add. The host serves them; this module only
records them, so `addRoute` stays a plain synchronous call into Python."""

import contextvars
import threading

# The plugin whose code is running: set by the host around every call into a
# plugin, and inherited by the tasks that code creates.
current_plugin = contextvars.ContextVar("luna_current_plugin", default=None)

# Paths of the service's own routes, set by the host at start-up.
service_paths = frozenset()

# path -> (plugin name, handler, methods or None, plugin instance). Plugins add
# routes on the event loop; the host drops and reads them from actor threads.
_table = {}
_lock = threading.Lock()


def _normalise(path):
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"route path must start with '/': {path!r}")
    return path.rstrip("/") or "/"


def _collides(a, b):
    """Whether one request path could match both templates (`{name}` matches any segment)."""
    sa, sb = a.split("/"), b.split("/")
    return len(sa) == len(sb) and all(x == y or x.startswith("{") or y.startswith("{") for x, y in zip(sa, sb, strict=True))


def add(plugin, path, handler, methods):
    owner = current_plugin.get()
    owner_name = owner[0] if owner else type(plugin).__module__
    path = _normalise(path)
    for service_path in service_paths:
        if _collides(path, service_path):
            raise ValueError(f"route {path} collides with the service route {service_path}")
    if methods is not None:
        methods = frozenset(m.lower() for m in methods)
    with _lock:
        for other, route in _table.items():
            if route[0] != owner_name and _collides(path, other):
                raise ValueError(f"route {path} collides with {other} of plugin {route[0]}")
        _table[path] = (owner_name, handler, methods, plugin)


def drop(plugin_name):
    with _lock:
        for path in [p for p, r in _table.items() if r[0] == plugin_name]:
            del _table[path]


def paths(plugin_name):
    with _lock:
        return sorted(p for p, r in _table.items() if r[0] == plugin_name)


def get(path):
    with _lock:
        return _table.get(path)

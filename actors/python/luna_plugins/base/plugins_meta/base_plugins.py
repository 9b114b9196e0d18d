"""Base classes of plugins, at the module path LUNA PLATFORM 5 uses."""

import abc
import json as _json

from luna_plugins import _routes
from luna_plugins.base.monitoring import BaseRequestMonitoringPlugin  # noqa: F401 (re-exported)
from luna_plugins.base.plugins_meta._base import BaseEventPlugin, BasePlugin  # noqa: F401


class pluginHTTPResponse:
    """What a plugin route returns: status, body (str, bytes, or JSON-able), headers."""

    def __init__(self, statusCode=200, body="", headers=None):
        self.statusCode = statusCode
        self.body = body
        self.headers = dict(headers or {})

    def encode(self):
        """(status, headers, body bytes), with JSON for anything but text and bytes."""
        headers = dict(self.headers)
        body = self.body
        if isinstance(body, (bytes, bytearray, memoryview)):
            data = bytes(body)
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = _json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        return int(self.statusCode), {str(k): str(v) for k, v in headers.items()}, data


class BaseBackgroundHandler:
    """A class-based route handler: methods named after HTTP verbs take the request.

    A fresh handler is made for each request with the plugin's `app`."""

    def __init__(self, application=None):
        self.application = application

    def response(self, body="", headers=None, statusCode=200):
        return pluginHTTPResponse(statusCode=statusCode, body=body, headers=headers)


class BaseBackgroundPlugin(BasePlugin, abc.ABC):
    """A plugin for background work: routes, long-running coroutines, data sources."""

    def addRoute(self, path, handler, methods=None):
        """Serve `handler` at `path`: a BaseBackgroundHandler subclass, or a
        function (sync or async) with `methods`, a set of lower-case verbs."""
        _routes.add(self, path, handler, methods)

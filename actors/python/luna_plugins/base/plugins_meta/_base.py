"""The root of the plugin classes. Kept apart so monitoring and base_plugins can both import it."""

import abc


class BasePlugin(abc.ABC):  # noqa: B024 (abstract as LUNA's base classes are; nothing to override)
    """Every plugin: `__init__(app)`, `async initialize()`, work, `async close()`."""

    def __init__(self, app=None):
        self.app = app

    async def initialize(self):  # noqa: B027 (an optional hook)
        """Start the plugin. No-op by default."""

    async def close(self):  # noqa: B027 (an optional hook)
        """Stop the plugin: close connections, cancel tasks. No-op by default."""


class BaseEventPlugin(BasePlugin, abc.ABC):
    """A plugin called for every event whose type is its `eventName`."""

    eventName = None

    @abc.abstractmethod
    async def handleEvent(self, *args, **kwargs):
        """Handle one event."""

"""The root of the plugin classes. Kept apart so monitoring and base_plugins can both import it."""

import abc


class BasePlugin(abc.ABC):
    """Every plugin: `__init__(app)`, `async initialize()`, work, `async close()`."""

    def __init__(self, app=None):
        self.app = app

    async def initialize(self):
        """Start the plugin. No-op by default."""

    async def close(self):
        """Stop the plugin: close connections, cancel tasks. No-op by default."""


class BaseEventPlugin(BasePlugin, abc.ABC):
    """A plugin called for every event whose type is its `eventName`."""

    eventName = None

    @abc.abstractmethod
    async def handleEvent(self, *args, **kwargs):  # noqa: N802 (LUNA's name)
        """Handle one event."""

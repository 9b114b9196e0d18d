"""An event plugin that takes 100 ms per event: the load test shows requests
do not wait for it."""

import asyncio

from luna_plugins.base.plugins_meta.base_plugins import BaseEventPlugin


class SlowEvents(BaseEventPlugin):
    eventName = "monitoring_event"

    async def handleEvent(self, points, logger):
        await asyncio.sleep(0.1)

"""Request monitoring in InfluxDB line protocol, over HTTP.

An event plugin and a background plugin in one module share its buffer: the
event plugin turns each point into a line, and the background plugin sends
the lines in batches, every `flush_interval` seconds or once `batch_size`
lines wait, and at close.

[plugins.config.request_monitoring]
url = "http://127.0.0.1:8086/api/v2/write?bucket=luna_matcher&precision=ns"
flush_interval = 1.0
batch_size = 500
"""

import asyncio

from aiohttp import ClientSession, ClientTimeout

from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin, BaseRequestMonitoringPlugin

DEFAULT_URL = "http://127.0.0.1:8086/api/v2/write?bucket=luna_matcher&precision=ns"

# Lines waiting to be sent: shared by both plugins of this module.
buffer = []
ready = asyncio.Event()


def _escape_tag(value):
    return str(value).replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _field(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def line(point):
    """One point in InfluxDB line protocol, nanosecond timestamp."""
    tags = "".join(f",{_escape_tag(k)}={_escape_tag(v)}" for k, v in sorted(point.tags.items()))
    fields = ",".join(f"{_escape_tag(k)}={_field(v)}" for k, v in sorted(point.fields.items()))
    return f"{_escape_tag(point.series)}{tags} {fields} {int(point.eventTime * 1e9)}"


class RequestMonitoringPlugin(BaseRequestMonitoringPlugin):
    """Turns every monitoring point into a line in the shared buffer."""

    def __init__(self, app):
        super().__init__(app)
        self.batch_size = int(app.ctx.config.get("batch_size", 500))

    async def flushPointToMonitoring(self, point, logger):
        buffer.append(line(point))
        if len(buffer) >= self.batch_size:
            ready.set()


class LineSender(BaseBackgroundPlugin):
    """Sends the buffered lines to the configured URL."""

    def __init__(self, app):
        super().__init__(app)
        self.url = app.ctx.config.get("url", DEFAULT_URL)
        self.interval = float(app.ctx.config.get("flush_interval", 1.0))
        self.logger = app.ctx.logger
        self.session = None
        self.task = None
        self.failing = False

    async def initialize(self):
        self.session = ClientSession(timeout=ClientTimeout(total=5))
        self.task = asyncio.create_task(self.run())

    async def run(self):
        while True:
            try:
                await asyncio.wait_for(ready.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            ready.clear()
            await self.send()

    async def send(self):
        if not buffer:
            return
        lines = buffer[:]
        del buffer[: len(lines)]
        try:
            async with self.session.post(self.url, data="\n".join(lines).encode()) as response:
                if response.status >= 300:
                    raise RuntimeError(f"{response.status} {await response.text()}")
            if self.failing:
                self.logger.info("monitoring receiver %s is back", self.url)
            self.failing = False
        except Exception as error:  # the receiver being down must not stop monitoring
            if not self.failing:
                self.logger.warning("cannot send %d points to %s: %s", len(lines), self.url, error)
            self.failing = True

    async def close(self):
        if self.task:
            self.task.cancel()
        await self.send()
        if self.session:
            await self.session.close()

"""Create faces from the messages of a Redis stream.

Each message holds `descriptor` (base64, SDK container or raw) and optionally
`descriptor_version`, `account_id`, `list_id`, `user_data`, `external_id`.
The plugin reads the stream in a consumer group, creates each face through
the service's own API and acknowledges the message once the face exists, so
a restart loses nothing. A message the service refuses is acknowledged and
counted as rejected.

[plugins.config.redis_faces]
url = "redis://127.0.0.1:6379/0"
stream = "luna:faces"
group = "luna-matcher"
account_id = "..."   # for messages that carry none

GET /redis-faces/stats  {"created": n, "rejected": n, "connected": bool}
"""

import asyncio
import socket

import redis.asyncio as redis
from aiohttp import ClientSession

from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin, pluginHTTPResponse


class RedisFacesPlugin(BaseBackgroundPlugin):
    def __init__(self, app):
        super().__init__(app)
        config = app.ctx.config
        self.url = config.get("url", "redis://127.0.0.1:6379/0")
        self.stream = config.get("stream", "luna:faces")
        self.group = config.get("group", "luna-matcher")
        self.consumer = config.get("consumer", socket.gethostname())
        self.account_id = config.get("account_id")
        self.api = app.ctx.serviceUrl
        self.logger = app.ctx.logger
        self.stats = {"created": 0, "rejected": 0, "connected": False}
        self.task = None
        self.client = None
        self.http = None

    async def initialize(self):
        self.addRoute("/redis-faces/stats", self.report, methods={"get"})
        self.http = ClientSession()
        self.task = asyncio.create_task(self.consume())

    async def report(self, request):
        return pluginHTTPResponse(body=self.stats)

    async def consume(self):
        """Read forever; a lost connection is retried, never fatal."""
        delay = 0.5
        while True:
            try:
                self.client = redis.from_url(self.url)
                try:
                    await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
                except redis.ResponseError as error:
                    if "BUSYGROUP" not in str(error):
                        raise
                self.stats["connected"] = True
                delay = 0.5
                # First what this consumer read but did not acknowledge, then new messages.
                await self.read("0")
                while True:
                    await self.read(">")
            except (redis.ConnectionError, OSError) as error:
                self.stats["connected"] = False
                self.logger.warning("redis %s unavailable (%s); retrying in %.1fs", self.url, error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
            finally:
                if self.client is not None:
                    await self.client.aclose()

    async def read(self, start):
        replies = await self.client.xreadgroup(self.group, self.consumer, {self.stream: start}, count=100, block=1000)
        for _, messages in replies or []:
            for message_id, fields in messages:
                await self.create(fields)
                await self.client.xack(self.stream, self.group, message_id)

    async def create(self, fields):
        text = {k.decode(): v.decode() for k, v in fields.items()}
        descriptor = {"data": text["descriptor"]} if "descriptor" in text else {}
        if "descriptor_version" in text:
            descriptor["version"] = int(text["descriptor_version"])
        face = {"account_id": text.get("account_id", self.account_id), "descriptor": descriptor}
        for key in ("user_data", "external_id"):
            if key in text:
                face[key] = text[key]
        if "list_id" in text:
            face["lists"] = [text["list_id"]]
        async with self.http.post(f"{self.api}/1/faces", json=face) as response:
            if response.status == 201:
                self.stats["created"] += 1
            elif 400 <= response.status < 500:
                self.stats["rejected"] += 1
                self.logger.warning("message refused: %s", await response.text())
            else:
                raise OSError(f"service answered {response.status}")

    async def close(self):
        if self.task:
            self.task.cancel()
        if self.http:
            await self.http.close()

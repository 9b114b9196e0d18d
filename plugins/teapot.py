"""The teapot of docs/plugins.md: two routes and a periodic job.

GET /teapot          418 "I am teapot"
GET /teapot/version  200 "T800"
GET /teapot/ticks    how many times the periodic job has run
"""

import asyncio

from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundHandler, BaseBackgroundPlugin, pluginHTTPResponse


class Handler(BaseBackgroundHandler):
    async def get(self, request):
        return self.response(body="I am teapot", headers={"Content-Type": "text/plain"}, statusCode=418)


def version(request):
    return pluginHTTPResponse(statusCode=200, body="T800", headers={"Content-Type": "text/plain"})


class TeapotPlugin(BaseBackgroundPlugin):
    def __init__(self, app):
        super().__init__(app)
        self.interval = float(app.ctx.config.get("interval", 1.0))
        self.ticks = 0
        self.task = None

    async def initialize(self):
        self.addRoute("/teapot", Handler)
        self.addRoute("/teapot/version", version, methods={"get"})
        self.addRoute("/teapot/ticks", self.report, methods={"get"})
        self.task = asyncio.create_task(self.job())

    async def report(self, request):
        return pluginHTTPResponse(body={"ticks": self.ticks})

    async def job(self):
        while True:
            await asyncio.sleep(self.interval)
            self.ticks += 1

    async def close(self):
        if self.task:
            self.task.cancel()

"""Create faces from the messages of a Redis stream.

Each message holds `descriptor` (base64, SDK container or raw) and optionally
`descriptor_version`, `account_id`, `list_id`, `user_data`, `external_id`.
The plugin reads the stream in a consumer group, creates each face through
the service's own API and acknowledges the message once the face exists.

- A message that cannot become a face (a bad field, or the service answers
  4xx) is copied to the dead-letter stream (`<stream>:dead`) with `error` and
  `message_id` added, and acknowledged in the same transaction.
- While the service answers 5xx or cannot be reached, the message stays
  pending and is tried again after a pause (doubling up to 10 s).
- Messages another consumer of the group left pending for `claim_idle`
  seconds (it died, or its host was replaced) are claimed and handled here.

[plugins.config.redis_faces]
url = "redis://127.0.0.1:6379/0"
stream = "luna:faces"
group = "luna-matcher"
account_id = "..."   # for messages that carry none

GET /redis-faces/stats  {"created": n, "rejected": n, "retried": n, "connected": bool}
"""

import asyncio
import socket
import time

import redis.asyncio as redis

from luna_plugins.base.plugins_meta.base_plugins import (
    BaseBackgroundPlugin,
    pluginHTTPResponse,
)

from .face_intake import (
    Backoff,
    FaceClient,
    PoisonMessageError,
    ServiceUnavailableError,
    face_request,
    loggable,
)

BATCH = 100


class RedisFacesPlugin(BaseBackgroundPlugin):
    def __init__(self, app):
        super().__init__(app)
        config = app.ctx.config
        self.url = config.get("url", "redis://127.0.0.1:6379/0")
        self.stream = config.get("stream", "luna:faces")
        self.dead_stream = config.get("dead_letter_stream", f"{self.stream}:dead")
        self.group = config.get("group", "luna-matcher")
        self.consumer = config.get("consumer", socket.gethostname())
        self.claim_idle = float(config.get("claim_idle", 60.0))
        self.account_id = config.get("account_id")
        self.service_url = config.get("service_url", app.ctx.serviceUrl)
        self.timeout = float(config.get("request_timeout", 30.0))
        self.logger = app.ctx.logger
        self.stats = {"created": 0, "rejected": 0, "retried": 0, "connected": False}
        # The connection's name in CLIENT LIST (a name takes '!' to '~' only).
        self.client_name = "".join(
            c if "!" <= c <= "~" else "_"
            for c in f"luna-matcher-redis_faces-{self.stream}"
        )
        self.task = None
        self.faces = None

    async def initialize(self):
        self.addRoute("/redis-faces/stats", self.report, methods={"get"})
        self.faces = FaceClient(self.service_url, self.timeout)
        self.task = asyncio.create_task(self.consume())

    async def report(self, request):
        return pluginHTTPResponse(body=self.stats)

    async def consume(self):
        """Read forever; a lost connection is retried, never fatal."""
        backoff = Backoff()
        while True:
            client = redis.from_url(
                self.url,
                socket_connect_timeout=5,
                socket_timeout=10,
                client_name=self.client_name,
            )
            try:
                await self.join_group(client)
                self.stats["connected"] = True
                backoff.reset()
                await self.read(client)
            except (
                redis.ConnectionError,
                redis.TimeoutError,
                redis.ResponseError,
            ) as error:
                # ResponseError: e.g. the stream or group was deleted: join again.
                failure = f"{type(error).__name__}: {error}"
            finally:
                self.stats["connected"] = False
                await client.aclose()
            delay = backoff.next()
            self.logger.warning(
                "redis %s stream %s unavailable (%s); connecting again in %.1fs",
                loggable(self.url),
                self.stream,
                failure,
                delay,
            )
            await asyncio.sleep(delay)

    async def join_group(self, client):
        try:
            await client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError:
            # BUSYGROUP: the group exists already. If it does not, the error stands.
            if not any(
                g["name"].decode() == self.group
                for g in await client.xinfo_groups(self.stream)
            ):
                raise

    async def read(self, client):
        """First this consumer's pending messages (and those claimed from idle
        consumers), then new ones; back to the pending ones after the service
        failed or when it is time to look for idle consumers again."""
        backoff = Backoff()
        start, claimed_at = "0", 0.0
        while True:
            if start == "0" and time.monotonic() - claimed_at >= self.claim_idle:
                await self.claim(client)
                claimed_at = time.monotonic()
            replies = await client.xreadgroup(
                self.group, self.consumer, {self.stream: start}, count=BATCH, block=1000
            )
            messages = [m for _, batch in replies or [] for m in batch]
            if start == "0" and not messages:
                start = ">"
            for message_id, fields in messages:
                try:
                    await self.handle(client, message_id, fields)
                except ServiceUnavailableError as error:
                    # Not the message's fault: it and those after it stay pending.
                    self.stats["retried"] += 1
                    delay = backoff.next()
                    self.logger.warning(
                        "message %s stays pending: %s; retrying in %.1fs",
                        message_id.decode(),
                        error,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    start = "0"
                    break
            else:
                backoff.reset()
                if start == ">" and time.monotonic() - claimed_at >= self.claim_idle:
                    start = "0"

    async def claim(self, client):
        """Take over the messages other consumers left pending for `claim_idle`."""
        cursor = "0-0"
        while True:
            cursor, claimed, *_ = await client.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                int(self.claim_idle * 1000),
                cursor,
                count=BATCH,
            )
            if claimed:
                self.logger.warning(
                    "took over %d messages of %s pending for %.0fs or more",
                    len(claimed),
                    self.group,
                    self.claim_idle,
                )
            if cursor in (b"0-0", "0-0"):
                return

    async def handle(self, client, message_id, fields):
        try:
            await self.faces.create(face_request(decode(fields), self.account_id))
        except PoisonMessageError as error:
            await self.dead_letter(client, message_id, fields, str(error))
            return
        await client.xack(self.stream, self.group, message_id)
        self.stats["created"] += 1

    async def dead_letter(self, client, message_id, fields, reason):
        letter = {**fields, b"error": reason, b"message_id": message_id}
        async with client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_stream, letter)
            pipe.xack(self.stream, self.group, message_id)
            await pipe.execute()
        self.stats["rejected"] += 1
        self.logger.warning(
            "message %s moved to %s: %s", message_id.decode(), self.dead_stream, reason
        )

    async def close(self):
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.faces:
            await self.faces.close()


def decode(fields):
    """Field -> str, `descriptor_version` -> int; raises `PoisonMessageError`."""
    try:
        message = {key.decode(): value.decode() for key, value in fields.items()}
    except UnicodeDecodeError as error:
        raise PoisonMessageError(f"a field is not UTF-8: {error}") from error
    if "descriptor_version" in message:
        try:
            message["descriptor_version"] = int(message["descriptor_version"])
        except ValueError as error:
            version = message["descriptor_version"]
            raise PoisonMessageError(
                f"descriptor_version is not an integer: {version!r}"
            ) from error
    return message

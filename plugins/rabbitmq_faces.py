"""Create faces from the messages of a RabbitMQ queue.

Each message body is a JSON object with `descriptor` (base64, SDK container
or raw) and optionally `descriptor_version` (an integer), `account_id`,
`list_id`, `user_data`, `external_id`. The plugin consumes the queue with
manual acknowledgements, creates each face through the service's own API and
acknowledges the message once the face exists.

- A message that cannot become a face (not JSON, a bad field, or the service
  answers 4xx) is published, confirmed, to the dead-letter exchange
  (`<queue>.dead`, fanout, bound to the queue `<queue>.dead`) with the reason
  in the header `luna-error` (`luna-status`: the service's status, if it
  answered; `luna-queue`: where it came from), then acknowledged. The queue
  is declared with that exchange as its `x-dead-letter-exchange`, so what the
  broker itself dead-letters (a consumer's reject, a TTL or length policy)
  lands in the same place, with the broker's `x-death` header.
- While the service answers 5xx or cannot be reached, the message is
  returned to the queue (nack with requeue) after a pause that doubles up to
  10 s.
- A lost broker connection is opened again after a pause; what was not
  acknowledged is redelivered by the broker.

[plugins.config.rabbitmq_faces]
url = "amqp://guest:guest@127.0.0.1:5672/"
queue = "luna.faces"
account_id = "..."   # for messages that carry none

GET /rabbitmq-faces/stats
  {"created": n, "rejected": n, "retried": n, "connected": bool, "connections": n}
"""

import asyncio
import json

import aio_pika
from aio_pika.exceptions import AMQPError

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

# What a lost or refused broker connection raises.
BROKER_ERRORS = (AMQPError, ConnectionError, OSError, asyncio.TimeoutError)


class RabbitmqFacesPlugin(BaseBackgroundPlugin):
    def __init__(self, app):
        super().__init__(app)
        config = app.ctx.config
        self.url = config.get("url", "amqp://guest:guest@127.0.0.1:5672/")
        self.queue = config.get("queue", "luna.faces")
        self.dead_letter = config.get("dead_letter", f"{self.queue}.dead")
        self.prefetch = int(config.get("prefetch", 100))
        self.account_id = config.get("account_id")
        self.service_url = config.get("service_url", app.ctx.serviceUrl)
        self.timeout = float(config.get("request_timeout", 30.0))
        self.logger = app.ctx.logger
        self.stats = {
            "created": 0,
            "rejected": 0,
            "retried": 0,
            "connected": False,
            "connections": 0,
        }
        self.retry = Backoff()
        self.task = None
        self.faces = None

    async def initialize(self):
        self.addRoute("/rabbitmq-faces/stats", self.report, methods={"get"})
        self.faces = FaceClient(self.service_url, self.timeout)
        self.task = asyncio.create_task(self.consume())

    async def report(self, request):
        return pluginHTTPResponse(body=self.stats)

    async def consume(self):
        """Consume forever; a lost connection is opened again, never fatal."""
        backoff = Backoff()
        while True:
            try:
                # The name shows in `rabbitmqctl list_connections client_properties`.
                properties = {
                    "connection_name": f"luna-matcher rabbitmq_faces {self.queue}"
                }
                async with await aio_pika.connect(
                    self.url, timeout=10, client_properties=properties
                ) as connection:
                    await self.consume_on(connection, backoff)
                failure = "the channel was closed or the queue deleted"
            except BROKER_ERRORS as error:
                failure = f"{type(error).__name__}: {error}"
            finally:
                self.stats["connected"] = False
            delay = backoff.next()
            self.logger.warning(
                "rabbitmq %s queue %s unavailable (%s); connecting again in %.1fs",
                loggable(self.url),
                self.queue,
                failure,
                delay,
            )
            await asyncio.sleep(delay)

    async def consume_on(self, connection, backoff):
        """Declare what the plugin uses and handle deliveries until the channel
        closes or the broker cancels the consumer because the queue went
        (deleted, its node lost)."""
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self.prefetch)
        dead = await channel.declare_exchange(
            self.dead_letter, aio_pika.ExchangeType.FANOUT, durable=True
        )
        await (await channel.declare_queue(self.dead_letter, durable=True)).bind(dead)
        queue = await channel.declare_queue(
            self.queue,
            durable=True,
            arguments={"x-dead-letter-exchange": self.dead_letter},
        )
        # Deliveries (at most `prefetch`), then None: stop.
        inbox = asyncio.Queue()

        def stop(*_):
            inbox.put_nowait(None)

        channel.close_callbacks.add(stop)
        (await channel.get_underlay_channel()).on_consumer_cancel_callbacks.add(stop)
        await queue.consume(inbox.put)
        self.stats["connected"] = True
        self.stats["connections"] += 1
        backoff.reset()
        # What arrived before the channel closed stays unacknowledged: delivered again.
        while (message := await inbox.get()) is not None and not channel.is_closed:
            await self.handle(message, dead)

    async def handle(self, message, dead):
        try:
            await self.faces.create(face_request(parse(message.body), self.account_id))
        except PoisonMessageError as error:
            self.retry.reset()
            await self.dead_letter_message(message, dead, error)
            return
        except ServiceUnavailableError as error:
            # Not the message's fault: back to the queue, after a pause.
            self.stats["retried"] += 1
            delay = self.retry.next()
            self.logger.warning(
                "message %s goes back to %s: %s; in %.1fs",
                message_name(message),
                self.queue,
                error,
                delay,
            )
            await asyncio.sleep(delay)
            await message.nack(requeue=True)
            return
        self.retry.reset()
        await message.ack()
        self.stats["created"] += 1

    async def dead_letter_message(self, message, dead, error):
        headers = {
            **(message.headers or {}),
            "luna-error": str(error),
            "luna-queue": self.queue,
        }
        if error.status is not None:
            headers["luna-status"] = error.status
        letter = aio_pika.Message(
            body=message.body,
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            timestamp=message.timestamp,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        # The channel confirms publishes: the copy is kept before the original goes.
        await dead.publish(letter, routing_key=self.queue)
        await message.ack()
        self.stats["rejected"] += 1
        self.logger.warning(
            "message %s moved to %s: %s", message_name(message), self.dead_letter, error
        )

    async def close(self):
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.faces:
            await self.faces.close()


def parse(body):
    """The JSON object of a body; raises `PoisonMessageError`."""
    try:
        message = json.loads(body)
    # ValueError: JSONDecodeError, UnicodeDecodeError. RecursionError: nested too deep.
    except (ValueError, RecursionError) as error:
        raise PoisonMessageError(
            f"the body is not JSON: {type(error).__name__}: {error}"
        ) from error
    if not isinstance(message, dict):
        raise PoisonMessageError(
            f"the body is JSON but not an object: {type(message).__name__}"
        )
    return message


def message_name(message):
    return message.message_id or f"delivery {message.delivery_tag}"

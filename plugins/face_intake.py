"""Turning queued messages into faces through the service's own API.

Shared by the data-source plugins `redis_faces` and `rabbitmq_faces`; not a
plugin itself. A message is a mapping with the fields below. What happens to
it is one of three outcomes:

- the face is created: acknowledge the message;
- `PoisonMessageError`: the message can never become a face (a bad field, or
  the service answered 4xx): acknowledge it and keep it as a dead letter with
  the reason;
- `ServiceUnavailableError`: the service answered 5xx or could not be reached:
  keep the message and try it again later.
"""

import asyncio
import urllib.parse

from aiohttp import ClientError, ClientSession, ClientTimeout

FIELDS = frozenset(
    {
        "descriptor",
        "descriptor_version",
        "account_id",
        "list_id",
        "user_data",
        "external_id",
    }
)

# 4xx answers that mean "later", not "never".
TRANSIENT_4XX = frozenset({408, 429})


class PoisonMessageError(Exception):
    """The message cannot become a face: `str()` is the reason, `status` the
    service's HTTP status if it answered."""

    def __init__(self, reason, status=None):
        super().__init__(reason)
        self.status = status


class ServiceUnavailableError(Exception):
    """The service cannot take the face now; the message is to be tried again."""


def face_request(message, account_id):
    """The body of `POST /1/faces` for a message (field -> value)."""
    unknown = sorted(set(message) - FIELDS)
    if unknown:
        # A misspelt field (`lsit_id`) would silently create a face outside its list.
        raise PoisonMessageError(
            f"unknown fields {unknown}; a message takes {sorted(FIELDS)}"
        )
    descriptor = {"data": message["descriptor"]} if "descriptor" in message else {}
    if "descriptor_version" in message:
        descriptor["version"] = message["descriptor_version"]
    face = {
        "account_id": message.get("account_id", account_id),
        "descriptor": descriptor,
    }
    for key in ("user_data", "external_id"):
        if key in message:
            face[key] = message[key]
    if "list_id" in message:
        face["lists"] = [message["list_id"]]
    return face


class FaceClient:
    """Creates faces at `<service_url>/1/faces`."""

    def __init__(self, service_url, timeout):
        self.url = f"{service_url.rstrip('/')}/1/faces"
        self.session = ClientSession(timeout=ClientTimeout(total=timeout))

    async def create(self, face):
        """Returns once the face exists; raises `PoisonMessageError` or
        `ServiceUnavailableError`."""
        try:
            async with self.session.post(self.url, json=face) as response:
                body = await response.text()
                status = response.status
        except (ClientError, asyncio.TimeoutError) as error:
            raise ServiceUnavailableError(
                f"{self.url}: {type(error).__name__}: {error}"
            ) from error
        if 200 <= status < 300:
            return
        if 400 <= status < 500 and status not in TRANSIENT_4XX:
            raise PoisonMessageError(f"service answered {status}: {body}", status)
        raise ServiceUnavailableError(f"{self.url} answered {status}: {body}")

    async def close(self):
        await self.session.close()


class Backoff:
    """Delays that double from `initial` up to `maximum`, until `reset()`."""

    def __init__(self, initial=0.5, maximum=10.0):
        self.initial = initial
        self.maximum = maximum
        self.delay = initial

    def next(self):
        delay = self.delay
        self.delay = min(self.delay * 2, self.maximum)
        return delay

    def reset(self):
        self.delay = self.initial


def loggable(url):
    """A broker URL as logs show it: without credentials."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(
        parts._replace(netloc=parts.netloc.rpartition("@")[2])
    )

"""Matching on chosen lists from copies kept in the plugin.

The plugin holds each list named in its configuration in
`luna_matcher.DescriptorSet`s (one per descriptor version) and answers the
sub-requests of `/1/matcher/faces` on such a list, at `cost` (below the
default matcher's 100). It declines, so that the default matcher answers:

- a list it does not hold: not configured, unknown, still loading, or with
  more than `max_list_size` faces (never loaded);
- a list whose members changed since it was loaded (its revision,
  `luna_matcher.store.list_revision`, moved), until it is loaded again;
- any filter other than `origin`, `list_id` and `account_id` (empty values
  do not count), or an account that is not the list's.

Lists are loaded at start, and again when their revision moves (checked
every `check_interval` seconds): a write to the list through this service
or, on a shared store, through another instance once this one has applied
it. Face count and account come from the service's API
(`GET /1/lists/{id}`), the sets from `luna_matcher.store.list_sets`, built
natively, so a load holds the event loop for no time per face.

[plugins.config.list_cache]
lists = ["<list id>", ...]
max_list_size = 100000
check_interval = 0.5
cost = 10.0

GET /list-cache  {"lists": {"<list id>": {"state", "faces", "loaded_at"}}}
with state "held", "stale" (its members changed since loaded), "loading",
"too_large", "missing" or "failed" (the service could not be asked; tried
again later).
"""

import asyncio
import time
import uuid

from aiohttp import ClientError, ClientSession, ClientTimeout

import luna_matcher
from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin, pluginHTTPResponse
from luna_plugins.matcher_plugins.base_plugin import BaseMatcherPlugin
from luna_plugins.matcher_plugins.base_struct import DescriptorType, Face, FaceMatchResult, MatchResult, MatchUnitType
from luna_plugins.matcher_plugins.exceptions import Rematch

# Filters that do not narrow a held list.
PLAIN_FILTERS = frozenset({"origin", "list_id", "account_id"})
# Seconds before a list the service could not be asked about is tried again.
RETRY_FAILED = 10.0


class Held:
    """One loaded list: a DescriptorSet per version, and the revision its load started at."""

    def __init__(self, account_id, sets, faces, revision):
        self.account_id = account_id
        self.sets = sets
        self.faces = faces
        self.revision = revision
        self.loaded_at = time.time()

    def current(self, list_id):
        """Whether no face joined or left the list since its load began."""
        return luna_matcher.store.list_revision(list_id) == self.revision


class State:
    """What the plugin classes of this module share."""

    def __init__(self):
        self.held = {}  # list id -> Held
        self.states = {}  # list id -> why it is not held: "too_large", "missing", "failed"
        self.tried = {}  # list id -> the revision its last load started at
        self.retry = {}  # list id -> when a failed load is tried again (monotonic seconds)

    def answerable(self, request):
        """The held list a sub-request can be answered from, or None."""
        filters = request.filters
        if any(filters.get(k) not in (None, "", []) for k in set(filters) - PLAIN_FILTERS):
            return None
        list_id = str(filters.get("list_id"))
        held = self.held.get(list_id)
        if held is None or not held.current(list_id):
            return None
        accounts = {str(a) for a in (request.account_id, filters.get("account_id")) if a is not None}
        return held if accounts <= {held.account_id} else None


state = State()


def _settings(config):
    lists = [str(uuid.UUID(str(list_id))) for list_id in config.get("lists", [])]
    return lists, int(config.get("max_list_size", 100000)), float(config.get("check_interval", 0.5))


class ListCacheMatcher(BaseMatcherPlugin):
    """Answers sub-requests on held lists."""

    availableReferenceTypes = frozenset([MatchUnitType.descriptor, MatchUnitType.face])
    availableCandidateTypes = frozenset([MatchUnitType.face])
    availableDescriptorTypes = frozenset([DescriptorType.face])

    def __init__(self, app):
        super().__init__(app)
        self.cost = float(app.ctx.config.get("cost", 10.0))

    def getAvailableTargets(self, origin):
        return frozenset(["face_id", "similarity"])

    def getMatchingCost(self, request):
        return self.cost if state.answerable(request) is not None else float("inf")

    async def match(self, request):
        held = state.answerable(request)
        if held is None:
            raise Rematch()  # written to or dropped since its cost was asked
        descriptors = held.sets.get(request.reference.descriptor_version)
        if descriptors is None:
            return MatchResult([])  # no face of the reference's version: nothing matches
        if request.threshold > 0:
            passing = await descriptors.search(request.reference.descriptor, len(descriptors), request.threshold)
            hits, total = passing[: request.limit], len(passing)
        else:
            # Similarities are never negative: every face of the version passes.
            hits, total = await descriptors.search(request.reference.descriptor, request.limit, request.threshold), len(descriptors)
        return MatchResult([FaceMatchResult(Face(face_id), similarity) for face_id, similarity in hits], totalFound=total)


class ListCacheLoader(BaseBackgroundPlugin):
    """Loads the configured lists, loads again those whose members changed; reports them."""

    def __init__(self, app):
        super().__init__(app)
        self.lists, self.max_size, self.check_interval = _settings(app.ctx.config)
        self.service_url = app.ctx.serviceUrl.rstrip("/")
        self.logger = app.ctx.logger
        self.session = None
        self.task = None

    async def initialize(self):
        self.addRoute("/list-cache", self.report, methods={"get"})
        self.session = ClientSession(timeout=ClientTimeout(total=30))
        self.task = asyncio.create_task(self.keep())

    async def close(self):
        if self.task is not None:
            self.task.cancel()
        if self.session is not None:
            await self.session.close()

    async def report(self, request):
        lists = {}
        for list_id in self.lists:
            held = state.held.get(list_id)
            if held is None:
                lists[list_id] = {"state": state.states.get(list_id, "loading"), "faces": None, "loaded_at": None}
            else:
                lists[list_id] = {"state": "held" if held.current(list_id) else "stale", "faces": held.faces, "loaded_at": held.loaded_at}
        return pluginHTTPResponse(body={"lists": lists})

    async def keep(self):
        """Load every list, then again each one whose revision moved since its
        last load began, and a failed one after RETRY_FAILED seconds."""
        while True:
            for list_id in self.lists:
                revision = luna_matcher.store.list_revision(list_id)
                moved = list_id not in state.tried or state.tried[list_id] != revision
                if moved or time.monotonic() >= state.retry.get(list_id, float("inf")):
                    await self.load(list_id, revision)
            await asyncio.sleep(self.check_interval)

    async def load(self, list_id, revision):
        """Load one list as it is at `revision` or later, or drop it: unknown,
        too large, or unreadable (tried again later)."""
        state.tried[list_id] = revision
        state.retry.pop(list_id, None)
        try:
            async with self.session.get(f"{self.service_url}/1/lists/{list_id}") as response:
                if response.status == 404:
                    return self.drop(list_id, "missing")
                response.raise_for_status()
                info = await response.json()
            if info["face_count"] > self.max_size:
                return self.drop(list_id, "too_large")
            sets = await luna_matcher.store.list_sets(list_id)
        except (ClientError, TimeoutError) as error:
            self.logger.warning("list %s: cannot load: %s", list_id, error)
            state.retry[list_id] = time.monotonic() + RETRY_FAILED
            return self.drop(list_id, "failed")
        if sets is None:
            return self.drop(list_id, "missing")
        faces = sum(len(descriptors) for descriptors in sets.values())
        if faces > self.max_size:
            return self.drop(list_id, "too_large")
        state.held[list_id] = Held(info["account_id"], sets, faces, revision)
        state.states.pop(list_id, None)

    def drop(self, list_id, why):
        state.held.pop(list_id, None)
        state.states[list_id] = why

"""A matching plugin that does no work of its own, for scripts/bench-dispatch:
what reaching a plugin costs a request. With `takes = false` (the default) it
declines every sub-request (cost inf: it is asked its cost, and the built-in
matcher answers); with `takes = true` it takes every sub-request and answers
at once with no faces.

[plugins.config.dispatch_matcher]
takes = false
"""

from luna_plugins.matcher_plugins.base_plugin import BaseMatcherPlugin
from luna_plugins.matcher_plugins.base_struct import DescriptorType, MatchResult, MatchUnitType


class DispatchMatcher(BaseMatcherPlugin):
    availableReferenceTypes = frozenset([MatchUnitType.descriptor, MatchUnitType.face])
    availableCandidateTypes = frozenset([MatchUnitType.face])
    availableDescriptorTypes = frozenset([DescriptorType.face])

    def __init__(self, app):
        super().__init__(app)
        self.cost = 1.0 if app.ctx.config.get("takes", False) else float("inf")

    def getAvailableTargets(self, origin):
        return frozenset(["face_id", "similarity"])

    def getMatchingCost(self, request):
        return self.cost

    async def match(self, request):
        return MatchResult([], totalFound=0)

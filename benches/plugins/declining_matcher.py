"""A matching plugin that declines every sub-request (cost inf): what asking a
plugin its cost adds to a request that the built-in matcher then answers.
Used by scripts/bench-dispatch."""

from luna_plugins.matcher_plugins.base_plugin import BaseMatcherPlugin
from luna_plugins.matcher_plugins.base_struct import DescriptorType, MatchUnitType


class DecliningMatcher(BaseMatcherPlugin):
    availableReferenceTypes = frozenset([MatchUnitType.descriptor, MatchUnitType.face])
    availableCandidateTypes = frozenset([MatchUnitType.face])
    availableDescriptorTypes = frozenset([DescriptorType.face])

    def getAvailableTargets(self, origin):
        return frozenset(["face_id", "similarity"])

    def getMatchingCost(self, request):
        return float("inf")

    async def match(self, request):
        raise AssertionError("a declined sub-request is never handed over")

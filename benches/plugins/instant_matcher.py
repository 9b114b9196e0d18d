"""A matching plugin that takes every sub-request and answers it at once with
no faces: what handing a sub-request to a plugin and back costs, without any
scan. Used by scripts/bench-dispatch."""

from luna_plugins.matcher_plugins.base_plugin import BaseMatcherPlugin
from luna_plugins.matcher_plugins.base_struct import DescriptorType, MatchResult, MatchUnitType


class InstantMatcher(BaseMatcherPlugin):
    availableReferenceTypes = frozenset([MatchUnitType.descriptor, MatchUnitType.face])
    availableCandidateTypes = frozenset([MatchUnitType.face])
    availableDescriptorTypes = frozenset([DescriptorType.face])

    def getAvailableTargets(self, origin):
        return frozenset(["face_id", "similarity"])

    def getMatchingCost(self, request):
        return 1.0

    async def match(self, request):
        return MatchResult([], totalFound=0)

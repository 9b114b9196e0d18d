"""The base class of matching plugins."""

import abc

from luna_plugins.base.plugins_meta._base import BasePlugin


class BaseMatcherPlugin(BasePlugin, abc.ABC):
    """A plugin that answers matching sub-requests it can do cheaply.

    For each sub-request whose reference type, candidate type and sort order
    the capability sets admit, the service asks `getMatchingCost`; the lowest
    cost wins, ties to the default matcher. `match` then answers it, or raises
    `Rematch` to hand it back."""

    availableReferenceTypes = frozenset()
    availableCandidateTypes = frozenset()
    availableSortOrder = frozenset(["similarity"])

    @abc.abstractmethod
    def getAvailableTargets(self, origin):
        """The targets this plugin can fill for candidates of `origin`."""

    @abc.abstractmethod
    def getMatchingCost(self, request):
        """The cost of answering `request`; float("inf") to decline."""

    @abc.abstractmethod
    async def match(self, request):
        """A list of FaceMatchResult, best first."""

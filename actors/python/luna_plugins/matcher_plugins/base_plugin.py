"""The base class of matching plugins."""

import abc

from luna_plugins.base.plugins_meta._base import BasePlugin
from luna_plugins.matcher_plugins.base_struct import IMatcher


class BaseMatcherPlugin(BasePlugin, IMatcher, abc.ABC):
    """A plugin that answers matching sub-requests it can do cheaply.

    For each sub-request whose reference type, candidate type, sort order and
    descriptor type the capability sets admit, the service asks
    `getMatchingCost`; the lowest cost wins, ties to the default matcher.
    `match` then answers it, or raises `Rematch` to hand it back."""

"""Monitoring points and the request-monitoring plugin base."""

import abc
import asyncio

from luna_plugins.base.plugins_meta._base import BaseEventPlugin


class MonitoringPoint:
    """One point: `series`, `eventTime` (epoch seconds), `tags` and `fields` dicts."""

    series = ""

    def __init__(self, eventTime, tags, fields):
        self.series = type(self).series  # an attribute of the instance too: vars(point) is the whole point
        self.eventTime = eventTime
        self.tags = tags
        self.fields = fields

    def __repr__(self):
        return f"{type(self).__name__}(series={self.series!r}, eventTime={self.eventTime!r}, tags={self.tags!r}, fields={self.fields!r})"


class RequestMonitoringPoint(MonitoringPoint):
    series = "request"


class ErrorMonitoringPoint(MonitoringPoint):
    series = "error"


class MatchingMonitoringPoint(MonitoringPoint):
    series = "matching"


POINT_CLASSES = {c.series: c for c in (RequestMonitoringPoint, ErrorMonitoringPoint, MatchingMonitoringPoint)}


def make_point(series, event_time, tags, fields):
    cls = POINT_CLASSES.get(series)
    if cls is None:
        cls = type(f"{series.title()}MonitoringPoint", (MonitoringPoint,), {"series": series})
        POINT_CLASSES[series] = cls
    return cls(event_time, tags, fields)


class BaseRequestMonitoringPlugin(BaseEventPlugin):
    """Base class for request monitoring: one `flushPointToMonitoring` per point."""

    eventName = "monitoring_event"

    @abc.abstractmethod
    async def flushPointToMonitoring(self, point, logger):
        """Send one point to the monitoring system."""

    async def handleEvent(self, points, logger):
        await asyncio.gather(*[self.flushPointToMonitoring(point, logger) for point in points])

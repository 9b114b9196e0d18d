"""The structures plugins see, without the service: run with
`python3 -m unittest discover -s actors/python/tests -t actors/python`."""

import asyncio
import inspect
import json
import unittest

from luna_plugins import _matching, _routes
from luna_plugins.base.monitoring import BaseRequestMonitoringPlugin, MonitoringPoint, make_point
from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundHandler, pluginHTTPResponse
from luna_plugins.errors import HostTimeout, MalformedResult
from luna_plugins.matcher_plugins.base_plugin import BaseMatcherPlugin
from luna_plugins.matcher_plugins.base_struct import (
    DescriptorType,
    ErrorMatchResult,
    Face,
    FaceMatchResult,
    IMatcher,
    MatchRequest,
    MatchResult,
    MatchUnitType,
    Reference,
)
from luna_plugins.matcher_plugins.exceptions import Rematch


class MatchingStructures(unittest.TestCase):
    def test_reference_takes_its_type_as_a_match_unit_type(self):
        r = Reference("descriptor", "probe", b"\x01\x02", 62)
        self.assertIs(r.type, MatchUnitType.descriptor)
        self.assertEqual(r.type, "descriptor", "a str enum compares equal to its value")
        self.assertEqual((r.id, r.descriptor, r.descriptor_version), ("probe", b"\x01\x02", 62))
        self.assertEqual(repr(r), "Reference(type='descriptor', id='probe', descriptor_version=62)")
        with self.assertRaises(ValueError):
            Reference("event", None, b"", 62)

    def test_match_request_exposes_the_candidate_origin(self):
        reference = Reference("face", "f", b"", 62)
        request = MatchRequest(reference, {"origin": "faces", "list_id": "l"}, ["face_id"], 3, 0.5, "acc", "1,rid")
        self.assertEqual(request.origin, "faces")
        self.assertEqual((request.limit, request.threshold, request.account_id, request.request_id), (3, 0.5, "acc", "1,rid"))
        self.assertIn("limit=3", repr(request))
        self.assertIsNone(MatchRequest(reference, {}, [], 1, 0.0, None, "r").origin)

    def test_face_and_result(self):
        face = Face(123, user_data="alice")
        self.assertEqual((face.face_id, face.attributes), ("123", {"user_data": "alice"}))
        result = FaceMatchResult(face, 0.75)
        self.assertIs(result.face, face)
        self.assertEqual(result.similarity, 0.75)

    def test_a_matcher_without_its_methods_is_abstract(self):
        class Partial(BaseMatcherPlugin):
            def getMatchingCost(self, request):
                return 1.0

        class Whole(Partial):
            def getAvailableTargets(self, origin):
                return frozenset(["face_id"])

            async def match(self, request):
                return []

        self.assertTrue(inspect.isabstract(Partial))
        self.assertFalse(inspect.isabstract(Whole))
        self.assertEqual(Whole.availableSortOrder, frozenset(["similarity"]))


def _matcher(cost=5.0, **capabilities):
    """A matching plugin admitting descriptor references against faces, with `capabilities` overridden."""

    class Matcher(BaseMatcherPlugin):
        availableReferenceTypes = frozenset([MatchUnitType.descriptor])
        availableCandidateTypes = frozenset([MatchUnitType.face])

        def getAvailableTargets(self, origin):
            return frozenset(["face_id"])

        def getMatchingCost(self, request):
            return cost

        async def match(self, request):
            return []

    for name, value in capabilities.items():
        setattr(Matcher, name, value)
    return Matcher()


def _request_data(reference_type="descriptor"):
    reference = {"type": reference_type, "id": "r", "descriptor": b"\x01", "descriptor_version": 62}
    filters = json.dumps({"origin": "faces", "list_id": "l"})
    return {"reference": reference, "filters": filters, "targets": ["face_id"], "limit": 3, "threshold": 0.0, "account_id": None, "request_id": "1,r"}


class MatcherInterface(unittest.TestCase):
    def test_a_matching_plugin_is_an_imatcher_and_imatcher_is_abstract(self):
        self.assertTrue(issubclass(BaseMatcherPlugin, IMatcher))
        self.assertTrue(inspect.isabstract(IMatcher))
        self.assertEqual(sorted(IMatcher.__abstractmethods__), ["getAvailableTargets", "getMatchingCost", "match"])

    def test_face_descriptors_by_default(self):
        self.assertEqual(IMatcher.availableDescriptorTypes, frozenset([DescriptorType.face]))
        self.assertEqual(DescriptorType("body"), "body")
        self.assertIs(MatchRequest(Reference("face", "f", b"", 62), {}, [], 1, 0.0, None, "r").descriptorType, DescriptorType.face)

    def test_capabilities_decide_who_is_asked(self):
        request = _matching.request(_request_data())
        self.assertEqual((request.reference.type, request.filters["list_id"]), (MatchUnitType.descriptor, "l"))
        self.assertEqual(_matching.cost(_matcher(), request), 5.0)
        self.assertEqual(_matching.cost(_matcher(availableDescriptorTypes=frozenset(["face"])), request), 5.0, "plain values count as their members")
        self.assertIsNone(_matching.cost(_matcher(availableDescriptorTypes=frozenset([DescriptorType.body])), request), "a body-only matcher is not asked")
        self.assertIsNone(_matching.cost(_matcher(), _matching.request(_request_data("face"))), "face references are not admitted")
        self.assertIsNone(_matching.cost(_matcher(availableSortOrder=frozenset()), request))
        self.assertIsNone(_matching.cost(_matcher(cost=float("inf")), request), "inf declines")
        self.assertIsNone(_matching.cost(_matcher(cost=float("nan")), request), "NaN declines")


class MatchAnswers(unittest.TestCase):
    def test_a_match_result_and_a_bare_list_mean_the_same(self):
        hits = [FaceMatchResult(Face("a"), 0.5), FaceMatchResult(Face("b"), 1)]
        self.assertEqual(_matching.plain(MatchResult(hits)), ([("a", 0.5), ("b", 1.0)], None, None))
        self.assertEqual(_matching.plain(hits), _matching.plain(MatchResult(hits)))
        self.assertEqual(_matching.plain(MatchResult(())), ([], None, None))
        self.assertEqual(_matching.plain(MatchResult(hits, totalFound=40)), ([("a", 0.5), ("b", 1.0)], 40, None))

    def test_an_error_match_result_is_its_code_and_detail(self):
        self.assertEqual(_matching.plain(ErrorMatchResult(22001, "list gone")), ([], None, (22001, "list gone")))
        self.assertEqual(_matching.plain(ErrorMatchResult(7)), ([], None, (7, "")))
        self.assertIn("22001", repr(ErrorMatchResult(22001, "x")))

    def test_anything_else_is_malformed(self):
        for answer in [
            None,
            "not a list",
            MatchResult("x"),
            [("a", 0.5)],
            [FaceMatchResult("a", 0.5)],
            [FaceMatchResult(Face("a"), True)],
            [FaceMatchResult(Face("a"), "0.5")],
            MatchResult([], totalFound=-1),
            MatchResult([], totalFound=2.0),
            MatchResult([], totalFound=True),
            ErrorMatchResult("22001"),
            ErrorMatchResult(True),
            ErrorMatchResult(-1),
            ErrorMatchResult(2**32),
            ErrorMatchResult(22001, detail=None),
        ]:
            with self.assertRaises(MalformedResult, msg=repr(answer)):
                _matching.plain(answer)


class Responses(unittest.TestCase):
    def test_text_bytes_and_json_bodies(self):
        self.assertEqual(pluginHTTPResponse(418, "I am teapot", {"Content-Type": "text/plain"}).encode(), (418, {"Content-Type": "text/plain"}, b"I am teapot"))
        self.assertEqual(pluginHTTPResponse(body=bytearray(b"\x00\x01")).encode(), (200, {}, b"\x00\x01"))
        status, headers, body = pluginHTTPResponse(body={"ticks": 3}).encode()
        self.assertEqual((status, headers, json.loads(body)), (200, {"Content-Type": "application/json"}, {"ticks": 3}))

    def test_status_and_headers_are_normalised(self):
        response = pluginHTTPResponse(statusCode="201", body="", headers={"X-Count": 5})
        self.assertEqual(response.encode(), (201, {"X-Count": "5"}, b""))
        own = pluginHTTPResponse(body=[1], headers={"Content-Type": "application/vnd.luna+json"})
        self.assertEqual(own.encode()[1], {"Content-Type": "application/vnd.luna+json"}, "a given content type is kept")

    def test_a_handler_builds_responses(self):
        handler = BaseBackgroundHandler(application="app")
        self.assertEqual(handler.application, "app")
        self.assertEqual(handler.response(body="x", statusCode=202).encode(), (202, {}, b"x"))


class Exceptions(unittest.TestCase):
    def test_subclasses_of_rematch_are_rematch(self):
        class NotCached(Rematch):
            pass

        self.assertTrue(issubclass(NotCached, Rematch))
        self.assertTrue(issubclass(Rematch, Exception))

    def test_the_hosts_verdicts_are_not_the_builtins_a_plugin_raises(self):
        # A plugin's own TimeoutError or TypeError must never read as the host's verdict.
        self.assertFalse(issubclass(TimeoutError, HostTimeout))
        self.assertFalse(issubclass(HostTimeout, TimeoutError))
        self.assertFalse(issubclass(TypeError, MalformedResult))
        self.assertFalse(issubclass(Rematch, (HostTimeout, MalformedResult)))


class MonitoringPoints(unittest.TestCase):
    def test_a_point_is_its_attributes(self):
        point = make_point("error", 1.5, {"error_code": "11004"}, {"execution_time": 0.1})
        self.assertIsInstance(point, MonitoringPoint)
        self.assertEqual(vars(point), {"series": "error", "eventTime": 1.5, "tags": {"error_code": "11004"}, "fields": {"execution_time": 0.1}})
        self.assertEqual(type(make_point("custom", 0, {}, {})).series, "custom")

    def test_request_monitoring_flushes_each_point(self):
        flushed = []

        class Monitor(BaseRequestMonitoringPlugin):
            async def flushPointToMonitoring(self, point, logger):
                flushed.append((point.series, logger))

        points = [make_point("request", 1.0, {}, {}), make_point("error", 1.0, {}, {})]
        asyncio.run(Monitor().handleEvent(points, "log"))
        self.assertEqual(flushed, [("request", "log"), ("error", "log")])


class Routes(unittest.TestCase):
    def test_routes_of_two_plugins_may_not_collide(self):
        self.addCleanup(_routes.drop, "a")
        self.addCleanup(_routes.drop, "b")
        _routes.current_plugin.set(("a", 1))
        _routes.add(object(), "/items/{id}/", lambda r: None, {"GET"})
        self.assertEqual(_routes.paths("a"), ["/items/{id}"])
        self.assertEqual(_routes.get("/items/{id}")[2], frozenset(["get"]))
        _routes.current_plugin.set(("b", 1))
        with self.assertRaisesRegex(ValueError, "collides with /items/{id} of plugin a"):
            _routes.add(object(), "/items/7", lambda r: None, None)
        with self.assertRaisesRegex(ValueError, "must start with '/'"):
            _routes.add(object(), "items", lambda r: None, None)


if __name__ == "__main__":
    unittest.main()

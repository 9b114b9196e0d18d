"""The host's side of matching plugins, without the service: the sub-request a
plugin is asked about, which plugins it may go to, and what their answers
mean. Decided by type, never by class or exception names."""

import json

from luna_plugins.errors import MalformedResult
from luna_plugins.matcher_plugins.base_struct import (
    DescriptorType,
    ErrorMatchResult,
    Face,
    FaceMatchResult,
    MatchRequest,
    MatchResult,
    MatchUnitType,
    Reference,
)

# Codes are u32 on the service's side.
_CODE_MAX = 2**32 - 1


def request(data):
    """A `MatchRequest` from the dict the service hands over."""
    r = data["reference"]
    reference = Reference(r["type"], r["id"], r["descriptor"], r["descriptor_version"])
    return MatchRequest(reference, json.loads(data["filters"]), data["targets"], data["limit"], data["threshold"], data["account_id"], data["request_id"])


def _admits(available, value):
    """Whether a capability set admits `value`; members may be enum members or their plain values."""
    return value in available or value.value in available


def cost(instance, request):
    """The instance's cost for a sub-request; None where its capabilities do
    not admit it or it declines (float("inf") or NaN)."""
    if not (
        _admits(instance.availableReferenceTypes, request.reference.type)
        and _admits(instance.availableCandidateTypes, MatchUnitType.face)
        and _admits(instance.availableDescriptorTypes, DescriptorType.face)
        and "similarity" in instance.availableSortOrder
    ):
        return None
    value = float(instance.getMatchingCost(request))
    return None if value != value or value == float("inf") else value


def _number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float))


def plain(answer):
    """What `match()` returned, as the service takes it: `(hits, total, None)`
    with hits `[(face_id, similarity)]` and the stated total found (or
    None), or `([], None, (code, detail))` for an `ErrorMatchResult`.
    MalformedResult when it is neither."""
    if isinstance(answer, ErrorMatchResult):
        code, detail = answer.errorCode, answer.detail
        if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= _CODE_MAX:
            raise MalformedResult(f"ErrorMatchResult.errorCode is {code!r}, not an error code")
        if not isinstance(detail, str):
            raise MalformedResult(f"ErrorMatchResult.detail is {type(detail).__name__}, not str")
        return [], None, (code, detail)
    results, total = (answer.result, answer.totalFound) if isinstance(answer, MatchResult) else (answer, None)
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
        raise MalformedResult(f"MatchResult.totalFound is {total!r}, not a count")
    if not isinstance(results, (list, tuple)):
        raise MalformedResult(f"match() returned {type(results).__name__}, not a MatchResult, a list of FaceMatchResult or an ErrorMatchResult")
    hits = []
    for r in results:
        if not isinstance(r, FaceMatchResult) or not isinstance(r.face, Face) or not _number(r.similarity):
            raise MalformedResult(f"match() returned {r!r}, not a FaceMatchResult")
        hits.append((r.face.face_id, float(r.similarity)))
    return hits, total, None

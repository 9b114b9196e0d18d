"""What matching plugins receive and return, and the interface they implement."""

import abc
import enum


class MatchUnitType(str, enum.Enum):
    descriptor = "descriptor"
    face = "face"


class DescriptorType(str, enum.Enum):
    """The kind of descriptor a sub-request matches: this service matches face descriptors."""

    face = "face"
    body = "body"


class Reference:
    """The reference of a sub-request: its type, id, descriptor bytes and version."""

    def __init__(self, type, id, descriptor, descriptor_version):
        self.type = MatchUnitType(type)
        self.id = id
        self.descriptor = descriptor
        self.descriptor_version = descriptor_version

    def __repr__(self):
        return f"Reference(type={self.type.value!r}, id={self.id!r}, descriptor_version={self.descriptor_version})"


class MatchRequest:
    """One sub-request: one reference against one candidate set."""

    def __init__(self, reference, filters, targets, limit, threshold, account_id, request_id):
        self.reference = reference
        self.filters = filters
        self.targets = targets
        self.limit = limit
        self.threshold = threshold
        self.account_id = account_id
        self.request_id = request_id

    @property
    def origin(self):
        return self.filters.get("origin")

    @property
    def descriptorType(self):
        return DescriptorType.face

    def __repr__(self):
        return f"MatchRequest(reference={self.reference!r}, filters={self.filters!r}, limit={self.limit}, threshold={self.threshold})"


class Face:
    """A matched face: its id, and any targets the plugin has at hand (user_data, ...)."""

    def __init__(self, face_id, **attributes):
        self.face_id = str(face_id)
        self.attributes = attributes

    def __repr__(self):
        return f"Face({self.face_id!r})"


class FaceMatchResult:
    """One matched candidate: the face and its similarity to the reference."""

    def __init__(self, face, similarity):
        self.face = face
        self.similarity = similarity

    def __repr__(self):
        return f"FaceMatchResult({self.face!r}, {self.similarity!r})"


class MatchResult:
    """A plugin's answer to a sub-request: its matched candidates
    (`FaceMatchResult`), in any order. A bare list of them means the same.

    `totalFound`, when the plugin knows it, is how many candidates pass the
    filters and the threshold before `limit` cuts them (the response's
    `total_found`); without it, the candidates answered are counted."""

    def __init__(self, result, totalFound=None):
        self.result = result
        self.totalFound = totalFound

    def __repr__(self):
        return f"MatchResult({self.result!r}, totalFound={self.totalFound!r})"


class ErrorMatchResult:
    """A plugin's answer that the sub-request fails: the candidate set's entry
    carries this error, and the default matcher does not answer it.

    `errorCode` is a code of the service's error table (`/1/docs/errors`,
    e.g. 22001): the entry carries that code with its description and
    `detail`. Any other number becomes 10013 with the plugin's code and
    `detail` in the entry's detail."""

    def __init__(self, errorCode, detail=""):
        self.errorCode = errorCode
        self.detail = detail

    def __repr__(self):
        return f"ErrorMatchResult(errorCode={self.errorCode!r}, detail={self.detail!r})"


class IMatcher(abc.ABC):
    """What answers matching sub-requests: the capability sets say which
    sub-requests it is asked about, `getMatchingCost` what one would cost,
    and `match` answers it."""

    availableReferenceTypes = frozenset()
    availableCandidateTypes = frozenset()
    availableSortOrder = frozenset(["similarity"])
    availableDescriptorTypes = frozenset([DescriptorType.face])

    @abc.abstractmethod
    def getAvailableTargets(self, origin):
        """The targets this matcher can fill for candidates of `origin`."""

    @abc.abstractmethod
    def getMatchingCost(self, request):
        """The cost of answering `request`; float("inf") to decline."""

    @abc.abstractmethod
    async def match(self, request):
        """A `MatchResult` (or a list of `FaceMatchResult`), or an
        `ErrorMatchResult`; raise `Rematch` to hand the sub-request back."""

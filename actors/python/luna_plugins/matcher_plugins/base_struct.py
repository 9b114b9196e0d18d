"""What matching plugins receive and return."""

import enum


class MatchUnitType(str, enum.Enum):
    descriptor = "descriptor"
    face = "face"


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

    def __repr__(self):
        return f"MatchRequest(reference={self.reference!r}, filters={self.filters!r}, limit={self.limit}, threshold={self.threshold})"


class Face:
    """A matched face: its id, and any targets the plugin has at hand (user_data, ...)."""

    def __init__(self, face_id, **attributes):
        self.face_id = str(face_id)
        self.attributes = attributes


class FaceMatchResult:
    def __init__(self, face, similarity):
        self.face = face
        self.similarity = similarity

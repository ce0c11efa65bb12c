"""One exception per gRPC status, translated to google.rpc.Status (ErrorInfo, BadRequest) in one place."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "tailor.dev"
# An error travels in response headers, which clients refuse past 8-16 KB: whatever a message, a field path, a
# description or a metadata value says is cut to these many characters (a long id a caller sent, echoed in a
# message, would otherwise turn the answer into a RESOURCE_EXHAUSTED of the client's own).
MAX_MESSAGE_CHARS = 1000
MAX_DETAIL_CHARS = 300


# What the whole error may take in those headers: grpc-message is percent-encoded (a non-ASCII character is up to
# 12 bytes there) and the details travel base64-encoded (4 bytes per 3), so both are budgeted in encoded bytes and
# together stay well under the 8 KB a client accepts.
MAX_MESSAGE_HEADER_BYTES = 2000
MAX_DETAILS_BYTES = 3000


def clip(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """text, cut to limit characters with an ellipsis."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _header_bytes(text: str) -> int:
    """Bytes of text as gRPC percent-encodes it in grpc-message (printable ASCII but % as is, the rest %XX)."""
    return sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in text.encode())


def clip_header(text: str, limit: int = MAX_MESSAGE_HEADER_BYTES) -> str:
    """text, cut with an ellipsis so that it takes at most limit bytes percent-encoded."""
    if _header_bytes(text) <= limit:
        return text
    used, end = 9, 0  # the ellipsis itself takes 9
    for end, char in enumerate(text):  # noqa: B007 - end is read after the loop
        used += _header_bytes(char)
        if used > limit:
            break
    return text[:end] + "…"


def shorten(text: str, size: int = 200) -> str:
    """Text cut to size characters with … (for texts an error relays, such as a parser's own message)."""
    return text if len(text) <= size else text[:size - 1] + "…"


QUOTE_CHARS = 40  # the most of a caller's value (an id, a name) that an error text repeats


def quote(value: object) -> str:
    """A value the caller sent, as an error text quotes it: in quotes, cut to QUOTE_CHARS characters with … .

    Errors name the field as the caller sent it and never echo a whole input: every id, name or value that an
    error message, a violation or ErrorInfo metadata repeats goes through here."""
    return repr(shorten(str(value), QUOTE_CHARS))


class TailorError(Exception):
    """Base of every error a Tailor RPC returns on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason = "UNKNOWN"

    def __init__(self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = {k: str(v) for k, v in (metadata or {}).items()}

    def details(self) -> list[any_pb2.Any]:
        info = any_pb2.Any()
        metadata = {clip(k, 100): shorten(v, QUOTE_CHARS) for k, v in self.metadata.items()}
        info.Pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=metadata))
        return [info]

    def to_status(self) -> grpc.Status:
        """The rich status that carries this error to the client."""
        status = status_pb2.Status(code=self.code.value[0],
                                   message=clip_header(clip(self.message, MAX_MESSAGE_CHARS)),
                                   details=self.details())
        return rpc_status.to_status(status)


class InvalidArgument(TailorError):
    """Bad input; carries one field violation per bad field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    # What is sent travels in response headers, which a client refuses past 8-16 KB (a batch of 1,000 bad events
    # would otherwise come back as RESOURCE_EXHAUSTED): the message names the first few, the details the first 25,
    # and then say how many more there are.
    SUMMARY_VIOLATIONS = 5
    SENT_VIOLATIONS = 25

    def __init__(self, violations: list[tuple[str, str]] | str, *, reason: str | None = None, metadata=None):
        if isinstance(violations, str):
            violations = [("", violations)]
        self.violations = list(violations)
        shown = self.violations[:self.SUMMARY_VIOLATIONS]
        summary = "; ".join(f"{f}: {d}" if f else d for f, d in shown)
        if len(self.violations) > len(shown):
            summary += f"; and {len(self.violations) - len(shown)} more"
        super().__init__(f"invalid argument: {summary}", reason=reason, metadata=metadata)

    def details(self) -> list[any_pb2.Any]:
        bad = error_details_pb2.BadRequest()
        budget = MAX_DETAILS_BYTES - 100  # room for the "and N more" line
        for f, d in self.violations[:self.SENT_VIOLATIONS]:
            violation = error_details_pb2.BadRequest.FieldViolation(field=clip(f), description=clip(d))
            budget -= violation.ByteSize() + 3
            if budget < 0:
                break
            bad.field_violations.append(violation)
        if len(self.violations) > len(bad.field_violations):
            bad.field_violations.add(
                description=f"and {len(self.violations) - len(bad.field_violations)} more violations, not listed")
        packed = any_pb2.Any()
        packed.Pack(bad)
        return super().details() + [packed]


class NotFound(TailorError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(TailorError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(TailorError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Unauthenticated(TailorError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(TailorError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class ResourceExhausted(TailorError):
    """Over a quota; retry_after_seconds, when given, travels as a google.rpc.RetryInfo."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after_seconds: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after_seconds = retry_after_seconds

    def details(self) -> list[any_pb2.Any]:
        details = super().details()
        if self.retry_after_seconds is not None:
            retry = error_details_pb2.RetryInfo()
            retry.retry_delay.FromMilliseconds(max(1, int(self.retry_after_seconds * 1000)))
            packed = any_pb2.Any()
            packed.Pack(retry)
            details.append(packed)
        return details


class Aborted(TailorError):
    """The call lost a conflict with a concurrent write (a deadlock, a serialization failure) more times than it
    retries by itself; it changed nothing and is safe to repeat."""

    code = grpc.StatusCode.ABORTED
    default_reason = "CONCURRENT_WRITE"


class Unavailable(TailorError):
    """A dependency (the database, another service) is down for now; retry_after_seconds, when given, travels as a
    google.rpc.RetryInfo so clients know the call is safe to repeat and when."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"

    def __init__(self, message: str, *, retry_after_seconds: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after_seconds = retry_after_seconds

    def details(self) -> list[any_pb2.Any]:
        details = super().details()
        if self.retry_after_seconds is not None:
            details.append(retry_info(self.retry_after_seconds))
        return details


def retry_info(seconds: float) -> any_pb2.Any:
    """A packed google.rpc.RetryInfo asking the client to wait `seconds` before retrying."""
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromMilliseconds(max(1, int(seconds * 1000)))
    packed = any_pb2.Any()
    packed.Pack(retry)
    return packed


def retry_delay_of(error: grpc.aio.AioRpcError) -> float | None:
    """The RetryInfo delay in seconds a failed call carries, or None (used by tests and clients)."""
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            return retry.retry_delay.ToMilliseconds() / 1000
    return None


class DeadlineExceeded(TailorError):
    """The caller's deadline passed while the work was under way, and the work was stopped."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Violations:
    """Collects field violations while validating a request; raise_if_any() raises one InvalidArgument."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, description: str) -> None:
        self.items.append((field, description))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def rich_status_of(error: grpc.aio.AioRpcError) -> grpc.Status | None:
    """Rebuilds the status a downstream call failed with, details included, to relay it to our caller."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # the rich status names another code than the call ended with (cut short on the way)
        status = None
    if status is None:
        status = status_pb2.Status(code=error.code().value[0], message=clip_header(
            clip(error.details() or "", MAX_MESSAGE_CHARS)))
    return rpc_status.to_status(status)


def status_details(error: grpc.aio.AioRpcError) -> tuple[list[tuple[str, str]], str]:
    """The field violations and ErrorInfo reason of a failed call (used by tests and clients)."""
    status = rpc_status.from_call(error)
    violations: list[tuple[str, str]] = []
    reason = ""
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
    return violations, reason


__all__ = [
    "TailorError", "InvalidArgument", "NotFound", "AlreadyExists", "FailedPrecondition", "Unauthenticated",
    "PermissionDenied", "ResourceExhausted", "Unavailable", "Violations", "rich_status_of", "status_details",
    "retry_info", "retry_delay_of", "DeadlineExceeded", "shorten", "quote", "QUOTE_CHARS",
]

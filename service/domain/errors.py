"""One exception root. Each class's docstring is its default message; the HTTP edge
(service/api/plumbing/error_responses.py) turns them into JSON answers, nothing below it knows HTTP."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Something went wrong in wavespeed-jobs.

    A subclass names its HTTP status and error type in its header,
    ``class NotFound(ServiceError, status=404, kind="not_found")``; without them it keeps
    its parent's."""

    status_code: int = 500
    error_type: str = "internal_error"

    def __init_subclass__(cls, *, status: int | None = None, kind: str | None = None, **rest: Any) -> None:
        super().__init_subclass__(**rest)
        if status is not None:
            cls.status_code = status
        if kind is not None:
            cls.error_type = kind

    def __init__(self, message: str | None = None, **context: Any) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.context = context
        super().__init__(self.message)


class FieldError(dict[str, str]):
    """One field problem: ``{"loc": "input.size", "msg": "..."}``."""

    def __init__(self, loc: str, msg: str) -> None:
        super().__init__(loc=loc, msg=msg)


MAX_FIELD_ERRORS = 20
MAX_FIELD_TEXT = 200


class ValidationFailed(ServiceError, status=422, kind="invalid_request"):
    """The request is invalid."""

    def __init__(self, fields: list[FieldError], message: str | None = None) -> None:
        # Deduplicated and capped: 65 KB of one bad query value repeated must not answer
        # 65,000 errors (15 MB of JSON). Each text is cut too: a loc may echo user input.
        kept = dict.fromkeys((f["loc"][:MAX_FIELD_TEXT], f["msg"][:MAX_FIELD_TEXT]) for f in fields)
        self.fields = [FieldError(loc, msg) for loc, msg in list(kept)[:MAX_FIELD_ERRORS]]
        fields = self.fields
        if message is None:
            message = "; ".join(f"{f['loc']}: {f['msg']}" for f in fields) or None
        super().__init__(message)


class BadRequest(ServiceError, status=400, kind="bad_request"):
    """The request could not be read."""


class Unauthorized(ServiceError, status=401, kind="unauthorized"):
    """A valid API key is required: send `Authorization: Bearer <key>`."""


class SignatureInvalid(Unauthorized, kind="invalid_signature"):
    """The webhook signature is invalid."""


class NotFound(ServiceError, status=404, kind="not_found"):
    """No such resource."""


class Conflict(ServiceError, status=409, kind="conflict"):
    """The request conflicts with the resource's current state."""


class BudgetExceeded(ServiceError, status=402, kind="budget_exceeded"):
    """The owner's monthly budget cannot cover this job's estimate."""


class PayloadTooLarge(ServiceError, status=413, kind="payload_too_large"):
    """The request body is too large."""


class EgressRefused(ServiceError, status=422, kind="egress_refused"):
    """The address is not one the service may reach on someone's behalf."""


class ConfigError(ServiceError):
    """The service is misconfigured."""


class ProviderError(ServiceError, status=502, kind="provider_error"):
    """The provider answered with an error."""

    def __init__(
        self,
        message: str | None = None,
        *,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.http_status = http_status
        self.retry_after = retry_after
        super().__init__(message)

    @property
    def is_permanent(self) -> bool:
        """A 4xx other than 429 means the request itself is wrong: retrying cannot help."""
        return self.http_status is not None and 400 <= self.http_status < 500 and self.http_status != 429


class SubmitOutcomeUnknown(ProviderError):
    """The submit request was sent but its answer was lost: the task may exist."""


class Retry(ServiceError):
    """Work that failed for a passing reason; do it again after ``delay`` seconds."""

    def __init__(self, message: str | None = None, *, delay: float) -> None:
        self.delay = delay
        super().__init__(message)


class Unavailable(ServiceError, status=503, kind="unavailable"):
    """The service cannot record this right now; try again."""

    def __init__(self, message: str | None = None, *, retry_after: int | None = None) -> None:
        self.retry_after = retry_after  # seconds, sent as Retry-After
        super().__init__(message)


class TooManyStreams(Unavailable, kind="too_many_streams"):
    """This process holds as many live streams as it may; try again shortly."""


class TooManyOwnerStreams(TooManyStreams, status=429):
    """This owner holds as many live streams as it may on this server; close one or try again shortly."""

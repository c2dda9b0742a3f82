"""One exception root. Each class's docstring is its default message; the HTTP edge
(service/api/errors.py) turns them into JSON answers, nothing below it knows HTTP."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Something went wrong in wavespeed-jobs."""

    status_code: int = 500
    error_type: str = "internal_error"

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


class ValidationFailed(ServiceError):
    """The request is invalid."""

    status_code = 422
    error_type = "invalid_request"

    def __init__(self, fields: list[FieldError], message: str | None = None) -> None:
        # Deduplicated and capped: 65 KB of one bad query value repeated must not answer
        # 65,000 errors (15 MB of JSON). Each text is cut too: a loc may echo user input.
        kept = dict.fromkeys((f["loc"][:MAX_FIELD_TEXT], f["msg"][:MAX_FIELD_TEXT]) for f in fields)
        self.fields = [FieldError(loc, msg) for loc, msg in list(kept)[:MAX_FIELD_ERRORS]]
        fields = self.fields
        if message is None:
            message = "; ".join(f"{f['loc']}: {f['msg']}" for f in fields) or None
        super().__init__(message)


class BadRequest(ServiceError):
    """The request could not be read."""

    status_code = 400
    error_type = "bad_request"


class Unauthorized(ServiceError):
    """A valid API key is required: send `Authorization: Bearer <key>`."""

    status_code = 401
    error_type = "unauthorized"


class SignatureInvalid(Unauthorized):
    """The webhook signature is invalid."""

    error_type = "invalid_signature"


class NotFound(ServiceError):
    """No such resource."""

    status_code = 404
    error_type = "not_found"


class Conflict(ServiceError):
    """The request conflicts with the resource's current state."""

    status_code = 409
    error_type = "conflict"


class BudgetExceeded(ServiceError):
    """The owner's monthly budget cannot cover this job's estimate."""

    status_code = 402
    error_type = "budget_exceeded"


class PayloadTooLarge(ServiceError):
    """The request body is too large."""

    status_code = 413
    error_type = "payload_too_large"


class EgressRefused(ServiceError):
    """The address is not one the service may reach on someone's behalf."""

    status_code = 422
    error_type = "egress_refused"


class ConfigError(ServiceError):
    """The service is misconfigured."""


class ProviderError(ServiceError):
    """The provider answered with an error."""

    status_code = 502
    error_type = "provider_error"

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


class Unavailable(ServiceError):
    """The service cannot record this right now; try again."""

    status_code = 503
    error_type = "unavailable"

    def __init__(self, message: str | None = None, *, retry_after: int | None = None) -> None:
        self.retry_after = retry_after  # seconds, sent as Retry-After
        super().__init__(message)


class TooManyStreams(Unavailable):
    """This process holds as many live streams as it may; try again shortly."""

    error_type = "too_many_streams"

"""The one error hierarchy. Each leaf knows its HTTP status and OpenAI error ``type``.

    DarkbloomError
     ├── ClientError (4xx)
     │    ├── InvalidRequest            400 invalid_request_error
     │    ├── AuthenticationFailed      401 authentication_error
     │    ├── PaymentRequired           402 insufficient_funds
     │    ├── Forbidden                 403 forbidden
     │    ├── NotFound                  404 not_found
     │    │    └── ModelNotFound        404 model_not_found
     │    ├── Conflict                  409 conflict
     │    ├── Gone                      410 gone (a device code used up or expired)
     │    ├── RequestTooLarge           413 request_too_large
     │    └── TooManyRequests           429 rate_limit_exceeded
     ├── UpstreamError (5xx caused by a provider or capacity)
     │    ├── ProviderFailed            502 provider_error, in the coordinator's words
     │    ├── ProviderReported          a provider's inference_error frame, in its own words
     │    ├── NoProviderAvailable       503 model_not_available
     │    └── UpstreamTimeout           504 timeout
     ├── BillingUnavailable             503 billing_error (Stripe not configured)
     ├── StripeFailed                   502 stripe_error
     └── InternalError                  500 internal_error

The API layer renders these in the caller's dialect; messages never contain prompt text. Between
provider and coordinator an error travels as an ``inference_error`` frame: ``to_frame`` and
``from_frame`` are the only conversions.
"""

from __future__ import annotations

from darkbloom.protocol.frames import InferenceError


class DarkbloomError(Exception):
    status_code = 500
    type = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
        sealed: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        # Consumer-blind refusals: the provider's words, sealed to the consumer (protocol/blind.py).
        self.sealed = sealed
        self.param = param
        self.code: str | None = code or self.type
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}


class ClientError(DarkbloomError):
    status_code = 400
    type = "invalid_request_error"


class InvalidRequest(ClientError):
    pass


class AuthenticationFailed(ClientError):
    status_code = 401
    type = "authentication_error"


class PaymentRequired(ClientError):
    status_code = 402
    type = "insufficient_funds"


class Forbidden(ClientError):
    status_code = 403
    type = "forbidden"


class NotFound(ClientError):
    status_code = 404
    type = "not_found"


class ModelNotFound(NotFound):
    type = "model_not_found"


class Conflict(ClientError):
    status_code = 409
    type = "conflict"


class Gone(ClientError):
    status_code = 410
    type = "gone"


class RequestTooLarge(ClientError):
    status_code = 413
    type = "request_too_large"


class TooManyRequests(ClientError):
    status_code = 429
    type = "rate_limit_exceeded"


class UpstreamError(DarkbloomError):
    status_code = 502
    type = "provider_error"


class ProviderFailed(UpstreamError):
    pass


class ProviderReported(UpstreamError):
    """A failure a provider reported. Its message and param may quote the request back, so they
    never reach a consumer as they are: the coordinator words the consumer's error itself."""

    def __init__(self, message: str, *, status_code: int, code: str | None = None,
                 param: str | None = None, sealed_message: str | None = None) -> None:
        super().__init__(message, status_code=status_code, code=code, param=param)
        self.code = code  # no default: a provider's missing code is not ours to invent
        self.sealed_message = sealed_message  # consumer-blind: the words, sealed to the consumer


def to_frame(error: DarkbloomError, request_id: str, sealed_message: str | None = None) -> InferenceError:
    """The provider's refusal or failure on the wire. With ``sealed_message`` (consumer-blind) the
    clear frame carries only status and code: the words are sealed to the consumer."""
    if sealed_message is not None:
        return InferenceError(request_id=request_id, status_code=error.status_code,
                              error="the provider refused the request; the reason is sealed to you",
                              code=error.code, sealed_message=sealed_message)
    return InferenceError(request_id=request_id, error=error.message, status_code=error.status_code,
                          code=error.code, param=error.param)


def from_frame(frame: InferenceError) -> ProviderReported:
    return ProviderReported(frame.error, status_code=frame.status_code, code=frame.code,
                            param=frame.param, sealed_message=frame.sealed_message)


class NoProviderAvailable(UpstreamError):
    status_code = 503
    type = "model_not_available"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    type = "timeout"


class BillingUnavailable(DarkbloomError):
    status_code = 503
    type = "billing_error"


class StripeFailed(DarkbloomError):
    status_code = 502
    type = "stripe_error"


class InternalError(DarkbloomError):
    pass

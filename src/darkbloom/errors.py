"""The one error hierarchy. Each leaf knows its HTTP status and OpenAI error ``type``.

    DarkbloomError
     ├── ClientError (4xx)
     │    ├── InvalidRequest            400 invalid_request_error
     │    ├── AuthenticationFailed      401 authentication_error
     │    ├── Forbidden                 403 forbidden
     │    ├── NotFound                  404 not_found
     │    │    └── ModelNotFound        404 model_not_found
     │    ├── Conflict                  409 conflict
     │    ├── RequestTooLarge           413 request_too_large
     │    └── TooManyRequests           429 rate_limit_exceeded
     ├── UpstreamError (5xx caused by a provider or capacity)
     │    ├── ProviderFailed            502 provider_error (or the provider's own 4xx/5xx)
     │    ├── NoProviderAvailable       503 model_not_available
     │    └── UpstreamTimeout           504 timeout
     └── InternalError                  500 internal_error

The API layer renders these in the caller's dialect; messages never contain prompt text.
"""

from __future__ import annotations


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
        self.code = code or self.type
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


class NoProviderAvailable(UpstreamError):
    status_code = 503
    type = "model_not_available"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    type = "timeout"


class InternalError(DarkbloomError):
    pass

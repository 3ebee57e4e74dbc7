"""Errors as OpenAI's envelope: ``{"error": {"message", "type", "param", "code"}}`` with a fitting HTTP status."""

from __future__ import annotations

from typing import Any

#: HTTP status -> OpenAI's error ``type`` (the names the openai client maps statuses to).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               408: "timeout_error", 413: "invalid_request_error", 415: "invalid_request_error",
               422: "invalid_request_error", 429: "rate_limit_error", 499: "cancelled", 500: "server_error",
               503: "server_error", 504: "timeout_error"}


class APIError(Exception):
    """A request that gets an error answer. ``code``: a short machine-readable reason (also the ``reason`` label
    of the rejects metric); ``headers`` e.g. ``Retry-After``."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}
        self.counted = False  # in the rejects metric already

    def body(self) -> dict[str, Any]:
        return envelope(self.message, ERROR_TYPES.get(self.status, "server_error"), self.param, self.code)


def envelope(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, code, param)

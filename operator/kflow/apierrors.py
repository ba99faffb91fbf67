"""Errors of the Kubernetes API, decoded the same way by every client kflow has.

`ApiError` itself is in `kflow._errors` (the error tree); it is re-exported here for the
clients that decode responses into it.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from kflow._errors import ApiError

__all__ = ["ApiError", "checked_json", "error_from"]


def error_from(status: int, text: str) -> ApiError:
    """The `ApiError` of an error response: the server's ``message`` if it sent a Status."""
    try:
        message = str(json.loads(text).get("message", text))
    except (ValueError, AttributeError):
        message = text
    return ApiError(status, message)


def checked_json(response: httpx.Response) -> Any:
    """The response's JSON body, or `ApiError` with the server's message."""
    if response.status_code >= 400:
        raise error_from(response.status_code, response.text)
    return response.json()

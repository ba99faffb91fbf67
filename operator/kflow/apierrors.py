"""Errors of the Kubernetes API, decoded the same way by every client kflow has."""

from __future__ import annotations

from typing import Any

import httpx

__all__ = ["ApiError", "checked_json"]


class ApiError(RuntimeError):
    """The API server answered with an error status; ``message`` is its own words."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Kubernetes API {status}: {message}")
        self.status = status
        self.message = message


def checked_json(response: httpx.Response) -> Any:
    """The response's JSON body, or `ApiError` with the server's message."""
    if response.status_code >= 400:
        try:
            message = str(response.json().get("message", response.text))
        except ValueError:
            message = response.text
        raise ApiError(response.status_code, message)
    return response.json()

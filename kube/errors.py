"""API error text: what a person reads when a call to the API server fails.

An ApiException's body is a Status object whose "message" says what was refused; a urllib3
error chain hides the useful part ("Connection refused") under connection object reprs.
"""

from __future__ import annotations

import json
import re

from kubernetes.client.exceptions import ApiException

HTTP_NOT_FOUND = 404
HTTP_CONFLICT = 409
HTTP_GONE = 410

__all__ = [
    "HTTP_CONFLICT",
    "HTTP_GONE",
    "HTTP_NOT_FOUND",
    "ApiException",
    "api_message",
    "cause",
    "short",
]


def api_message(err: ApiException) -> str:
    """The Status message of the answer, else the HTTP reason ("Forbidden")."""
    try:
        message = json.loads(err.body or "")["message"]
    except (ValueError, KeyError, TypeError):
        return str(err.reason)
    return str(message)


def cause(err: BaseException, *, limit: int | None = None) -> str:
    """The innermost useful message of an error chain, without connection object reprs:
    "Failed to establish a new connection: [Errno 111] Connection refused". With a limit, on
    one line and at most that long (a one-shot command's single line of output)."""
    reason = getattr(err, "reason", None)
    if isinstance(reason, BaseException):
        return cause(reason, limit=limit)
    if err.args and isinstance(err.args[0], BaseException):  # requests wraps urllib3's
        return cause(err.args[0], limit=limit)
    # urllib3 prefixes the connection's repr: "<...HTTPSConnection object at 0x..>: " (1.x),
    # "HTTPSConnection(host='127.0.0.1', port=1): " (2.x); the address is said elsewhere.
    text = re.sub(r"^(<[^>]*>|\w+\([^)]*\)):\s*", "", str(err))
    text = text or type(err).__name__
    return text if limit is None else short(text, limit)


def short(text: str, limit: int = 300) -> str:
    """The text on one line, cut to the limit with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""API error text, and the errors kube's writers raise for their callers to catch.

An ApiException's body is a Status object whose "message" says what was refused; a urllib3
error chain hides the useful part ("Connection refused") under connection object reprs.
This module imports no `kubernetes`: the services' ports (extender.binding.Binder,
extender.pending's EventSink and Nudger, ops.advertiser.NodeClient) name these errors
without loading the client.
"""

from __future__ import annotations

import json
import re
from typing import Any

HTTP_NOT_FOUND = 404
HTTP_CONFLICT = 409
HTTP_GONE = 410


class BindError(Exception):
    """The Binding could not be created; the message says why."""


class NodeAPIError(Exception):
    """A call to the API failed; the message says why, for a person."""


class EventExists(Exception):
    """The Event is there already (409): another replica, or this one before a restart."""


class EventMissing(Exception):
    """The Event to refresh is gone (404): expired past the API's event TTL."""


class WriteError(Exception):
    """A write failed; `problem` says what, without the pod (for logging once)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class EventWriteError(WriteError):
    """Writing an Event failed."""


class NudgeError(WriteError):
    """Setting a condition in a pod's status failed."""


def api_message(err: Any) -> str:
    """The Status message of an ApiException's answer, else the HTTP reason ("Forbidden")."""
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

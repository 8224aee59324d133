"""The webhook intake's HTTP edge: the one table from a refusal's reason to what the sender gets (status, whether
the connection is closed, Retry-After), and an answer as data (`Answer`: status, body bytes, retry_after, close)
that the controller's own listeners send as a response and the relay carries to an intake worker, which sends
the same response. Imported by intake workers: nothing here may pull in the store, the scheduler or Docker."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from aiohttp import web

from orchestrator.intake import relay
from orchestrator.intake.signatures import SignatureError
from orchestrator.jobs.refusal import Refusal


class Refused(NamedTuple):
    status: int
    close: bool = False  # the body may be left unread: the connection cannot carry another request
    retry_after: str | None = None


REFUSALS: Final[Mapping[str, Refused]] = {
    # receiving: body limits and signature (intake workers answer these themselves)
    "unsupported_encoding": Refused(415, close=True),
    "body_too_large": Refused(413, close=True),
    "body_timeout": Refused(408, close=True),
    "unreadable_body": Refused(400),
    "unknown_source": Refused(404),
    **{reason: Refused(401) for reason in sorted(SignatureError.REASONS)},
    # admission: the body as a job spec, and the job against its pool
    "invalid_json": Refused(400),
    "duplicate_key": Refused(400),
    "invalid_spec": Refused(422),
    "invalid_payload": Refused(400),
    "unknown_pool": Refused(422),
    "secrets_unavailable": Refused(422),
    "secret_name_taken": Refused(422),
    "timeout_too_long": Refused(422),
    # no room or no controller: nothing stored, the sender retries
    "queue_full": Refused(429, retry_after="30"),
    "shutting_down": Refused(503, retry_after="30"),
    "controller_unavailable": Refused(503, retry_after="30"),
    # not a refusal but a failure of the accept path: answered the same way, counted nowhere
    "internal_error": Refused(500),
}


@dataclass(frozen=True, slots=True)
class Answer:
    """What to send back for a delivery: a JSON body with its status, Retry-After, and whether to close."""

    status: int
    body: bytes
    retry_after: str | None = None
    close: bool = False

    def response(self) -> web.Response:
        resp = web.Response(body=self.body, status=self.status, content_type="application/json", charset="utf-8")
        if self.retry_after is not None:
            resp.headers["Retry-After"] = self.retry_after
        if self.close:
            resp.force_close()
        return resp

    def header(self, rid: int) -> dict[str, Any]:
        """The relay's "answer" frame header for delivery `rid` (the body travels as the frame's body)."""
        out: dict[str, Any] = {"t": "answer", "id": rid, "status": self.status}
        if self.retry_after is not None:
            out["retry_after"] = self.retry_after
        if self.close:
            out["close"] = True
        return out

    @classmethod
    def from_frame(cls, header: dict[str, Any], body: bytes) -> Answer:
        """An "answer" frame as the controller sent it. Raises relay.RelayError for a status that is missing."""
        retry_after = header.get("retry_after")
        return cls(
            relay.field(header, "status", int),
            body,
            retry_after if isinstance(retry_after, str) else None,
            header.get("close") is True,
        )


def json_answer(data: object, status: int) -> Answer:
    """A JSON body, encoded exactly as `web.json_response` would."""
    return Answer(status, json.dumps(data).encode())


def refusal_answer(refusal: Refusal) -> Answer:
    """A refusal as sent: a JSON error naming the reason (and the fields at fault), with its row's status,
    Retry-After and close."""
    row = REFUSALS[refusal.reason]  # a reason missing from the table is a bug (KeyError), not a guess
    data: dict[str, object] = {"error": refusal.message, "reason": refusal.reason}
    if refusal.fields is not None:
        data["fields"] = refusal.fields
    return Answer(row.status, json.dumps(data).encode(), row.retry_after, row.close)


def error_response(refusal: Refusal) -> web.Response:
    """A refusal as an aiohttp response: the connection closed after a body that was not read (408, 413, 415),
    always rather than only when the rest of the body happens to arrive late."""
    return refusal_answer(refusal).response()


INTERNAL_ERROR: Final = refusal_answer(Refusal("internal_error", "internal error"))

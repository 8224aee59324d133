"""Why a delivery is not taken: the one refusal type of the intake, from the body's limits and signature through
admission to a full queue. Pure (no HTTP, no store, nothing outside the standard library), so intake worker
processes import it without slowing their start."""

from __future__ import annotations


class Refusal(Exception):
    """A refused delivery. `reason` is a short machine code (metrics, audit trail, the answer's "reason"),
    `message` what the sender can act on, `fields` the spec fields at fault (an invalid spec), else None. It
    says nothing about HTTP: the webhook edge (`orchestrator.intake.answers`) maps each reason to its status."""

    def __init__(self, reason: str, message: str, fields: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.fields = fields

    def __repr__(self) -> str:
        return f"Refusal(reason={self.reason!r}, message={self.message!r}, fields={self.fields!r})"

"""Turns controller events into audit records, so action names and fields stay consistent across modules.

Records are checked, signed and appended by one writer thread, in the order the events happened: the event loop
only enqueues, so none of that work sits in request handling. Whatever queued up while the writer was busy is
written as one batch -- one write and one signature (see `audit` on batches) -- so under load the cost per event
falls instead of the queue growing. `flush` waits until everything enqueued is written; `close` drains the queue
first. Nothing here ever receives a token, JWT or secret value:
credentials are described by role, policies, TTL and a hash of the accessor."""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from typing import Any

from orchestrator.access.grants import Principal
from orchestrator.evidence.audit import AuditLog, Entry, accessor_digest, looks_like_secret, prepare
from orchestrator.evidence.refusals import Summary
from orchestrator.jobs.states import Job, JobState

log = logging.getLogger(__name__)

CONTROLLER: dict[str, Any] = {"type": "controller"}


def _withhold(value: Any) -> Any:
    if isinstance(value, str) and looks_like_secret(value):
        return f"[withheld: looks like a credential; sha256 {hashlib.sha256(value.encode()).hexdigest()[:16]}]"
    if isinstance(value, dict):
        return {k: _withhold(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_withhold(v) for v in value]
    return value


_MAX_BATCH = 512  # records per write and signature; bounds how long one batch holds the writer
# How long the writer waits after the first event of a batch. Under load that turns one signature per few events
# into one per burst; an event reaches the file at most this much later (a flush or close does not wait).
_LINGER_S = 0.005

_Item = tuple[dict[str, Any], str, str | None, str, str | None, dict[str, Any] | None, float]


class Auditor:
    def __init__(self, audit_log: AuditLog | None, *, linger_s: float = _LINGER_S) -> None:
        self.log = audit_log
        self._linger_s = linger_s
        self._queue: queue.SimpleQueue[_Item | threading.Event | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        if audit_log is not None:
            self._writer = threading.Thread(target=self._drain, name="audit-writer", daemon=True)
            self._writer.start()

    def _drain(self) -> None:
        """Writes whatever has queued up as one batch (one write, one signature), then waits for more."""
        assert self.log is not None
        stop = False
        while not stop:
            batch = [self._queue.get()]
            if self._linger_s > 0 and not isinstance(batch[0], threading.Event | None):
                time.sleep(self._linger_s)  # let a burst gather: one signature and one write for all of it
            while len(batch) < _MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            entries: list[Entry] = []
            done: list[threading.Event] = []
            for item in batch:
                if item is None:
                    stop = True  # close(): events after it are not written, but every flush waiting is released
                elif isinstance(item, threading.Event):
                    done.append(item)
                elif not stop and (entry := self._prepare(item)) is not None:
                    entries.append(entry)
            self._write(entries)
            for event in done:
                event.set()

    def _prepare(self, item: _Item) -> Entry | None:
        actor, action, target, outcome, remote, details, at = item
        try:
            try:
                return prepare(actor, action, target, outcome, remote=remote, details=details, at=at)
            except ValueError:
                # Text a sender chose (a delivery id, a job id) can look like a credential; the guard refuses
                # it, but the event must not vanish from the trail: record it with that text withheld.
                actor, target, remote, details = (_withhold(v) for v in (actor, target, remote, details))
                return prepare(actor, action, target, outcome, remote=remote, details=details, at=at)
        except Exception:
            # An audit failure must be loud but must not take a running job down with it.
            log.exception("could not write audit record", extra={"action": action, "target": target})
            return None

    def _write(self, entries: list[Entry]) -> None:
        assert self.log is not None
        try:
            self.log.append(entries)
        except Exception:
            log.exception(
                "could not write audit records",
                extra={"count": len(entries), "actions": sorted({e.action for e in entries})},
            )

    def flush(self, timeout_s: float = 30.0) -> None:
        """Blocks until every record enqueued so far is written (and fsynced)."""
        if self._writer is None or not self._writer.is_alive():
            return
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout_s)
        if self.log is not None:
            self.log.sync()

    def close(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            self._queue.put(None)
            self._writer.join(timeout=30)
        if self.log is not None:
            self.log.close()

    def _record(
        self,
        actor: dict[str, Any],
        action: str,
        target: str | None,
        outcome: str,
        *,
        remote: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        if self.log is not None:
            self._queue.put((actor, action, target, outcome, remote, details, time.time()))

    def config_loaded(self, digest: str, controller_id: str, warnings: list[str]) -> None:
        self._record(CONTROLLER, "config.loaded", controller_id, "ok", details={"digest": digest})
        for warning in warnings:
            self._record(CONTROLLER, "config.unsafe_opt_in", controller_id, "warning", details={"what": warning})

    def webhook(
        self,
        source: str,
        delivery: str | None,
        remote: str | None,
        outcome: str,
        *,
        job_id: str | None = None,
        reason: str | None = None,
        status: int | None = None,
    ) -> None:
        actor = {"type": "webhook", "source": source, "delivery": delivery}
        action = "webhook.accepted" if outcome in ("accepted", "duplicate") else "webhook.rejected"
        self._record(actor, action, job_id, outcome, remote=remote, details={"reason": reason, "http_status": status})

    def job_state(self, job: Job) -> None:
        details: dict[str, Any] = {"pool": job.pool, "attempt": job.attempt}
        if job.exit_code is not None:
            details["exit_code"] = job.exit_code
        if job.reason:
            details["reason"] = job.reason
        if job.approval is not None and job.state in (JobState.QUEUED, JobState.REJECTED):
            details["approval"] = job.approval.to_json()  # who decided, when, and their comment
        self._record(CONTROLLER, "job.state", job.id, job.state.value, details=details)

    def credentials_issued(
        self, job_id: str, *, role: str, policies: list[str], ttl_s: int, accessor: str, paths: list[str]
    ) -> None:
        details = {"role": role, "policies": policies, "ttl_s": ttl_s, "accessor_sha256": accessor_digest(accessor)}
        self._record(CONTROLLER, "credentials.issued", job_id, "ok", details=details)
        for path in paths:
            self._record(CONTROLLER, "secret.read", job_id, "ok", details={"path": path, "role": role})

    def credentials_denied(self, job_id: str, *, role: str, reason: str) -> None:
        self._record(CONTROLLER, "credentials.issued", job_id, "denied", details={"role": role, "reason": reason})

    def credentials_revoked(self, job_id: str | None, *, accessor: str, outcome: str, how: str) -> None:
        details = {"accessor_sha256": accessor_digest(accessor), "how": how}
        self._record(CONTROLLER, "credentials.revoked", job_id, outcome, details=details)

    def api(self, principal: Principal, action: str, target: str | None, remote: str | None, outcome: str) -> None:
        """A static token is recorded by its `token_name` (as it always was); a person signed in through the identity
        provider by `name` with `"kind": "oidc"`."""
        actor: dict[str, Any] = {"type": "api", "role": principal.role}
        if principal.kind == "token":
            actor["token_name"] = principal.name
        else:
            actor.update(name=principal.name, kind=principal.kind)
        self._record(actor, action, target, outcome, remote=remote)

    def console_login(
        self, principal: Principal | None, method: str, remote: str | None, outcome: str, *, reason: str | None = None
    ) -> None:
        """A sign-in to the web console (`method` "sso" or "token"): who, or for a refused one why (never the
        token typed in)."""
        actor: dict[str, Any] = {"type": "api", "token_name": None, "role": None}
        if principal is not None:
            actor = {"type": "api", "role": principal.role}
            if principal.kind == "token":
                actor["token_name"] = principal.name
            else:
                actor.update(name=principal.name, kind=principal.kind)
        details: dict[str, Any] = {"method": method}
        if reason is not None:
            details["reason"] = reason
        self._record(actor, "console.login", None, outcome, remote=remote, details=details)  # about no job

    def auth_failed(self, remote: str | None, route: str, reason: str) -> None:
        actor = {"type": "api", "token_name": None, "role": None}
        self._record(actor, "auth.failed", route, "denied", remote=remote, details={"reason": reason})

    def refusals_summarised(self, summary: Summary) -> None:
        """Refusals past their allowance (see evidence/refusals.py): one record and one log line for a window's
        worth of them."""
        action = {"webhook": "webhook.rejected_summary", "auth": "auth.failed_summary"}[summary.kind]
        details = summary.details()
        self._record(CONTROLLER, action, None, "summary", details=details)
        log.warning("refusals summarised", extra={"action": action, **details})

    def runner(self, action: str, job_id: str | None, outcome: str, details: dict[str, Any]) -> None:
        """A forge runner's registration, deletion, the job it took, a forge job no pool serves, ..."""
        self._record(CONTROLLER, f"runner.{action}", job_id, outcome, details=details)

    def callback_given_up(self, job_id: str, details: dict[str, Any]) -> None:
        """A status callback or commit status that will not be delivered: target, state, attempts, last error."""
        self._record(CONTROLLER, "callback.given_up", job_id, "failed", details=details)

    def alert(self, kind: str, subject: str, message: str, details: dict[str, Any]) -> None:
        self._record(CONTROLLER, f"alert.{kind}", subject, "warning", details={"message": message, **details})

    def reconcile(self, action: str, target: str | None, details: dict[str, Any]) -> None:
        self._record(CONTROLLER, f"reconcile.{action}", target, "ok", details=details)

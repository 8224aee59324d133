"""Signs a finished job's attestation and keeps it next to the job's log (one DSSE envelope per job)."""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.evidence.attestation import JobFacts, build_statement, sign_envelope
from orchestrator.jobs.spec import checked_job_id
from orchestrator.platform.files import write_atomic


class AttestationStore:
    def __init__(self, directory: Path, key: Ed25519PrivateKey) -> None:
        self.directory = directory
        self._key = key
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, job_id: str) -> Path:
        return self.directory / f"{checked_job_id(job_id)}.dsse.json"

    async def attest(self, facts: JobFacts) -> None:
        envelope = sign_envelope(build_statement(facts), self._key)
        data = json.dumps(envelope, indent=2).encode() + b"\n"
        await asyncio.to_thread(functools.partial(write_atomic, self.path(facts.job_id), data, mode=0o644))

    def read(self, job_id: str) -> bytes | None:
        try:
            return self.path(job_id).read_bytes()
        except FileNotFoundError:
            return None

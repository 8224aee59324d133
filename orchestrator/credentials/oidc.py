"""On-disk signing keys for the controller's OIDC issuer, and the job token minter.

Vault verifies job tokens against the JWKS we publish, so the private keys here are
equivalent to every Vault secret a job role can reach: they are kept owner-only and
never leave this module except as signatures.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeGuard, get_args

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from orchestrator.credentials.claims import MAX_LIFETIME_S, JobIdentity, build_claims
from orchestrator.platform.files import fsync_dir, write_atomic

__all__ = [
    "Algorithm",
    "JobTokenIssuer",
    "KeyStoreError",
    "SigningKeys",
    "jwk_thumbprint",
]

logger = logging.getLogger(__name__)

Algorithm = Literal["RS256", "ES256"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

#: 3072-bit RSA: NIST's recommendation beyond 2030; generation cost is paid once per rotation.
RSA_KEY_SIZE = 3072
INDEX_NAME = "keys.json"
INDEX_VERSION = 1
_ALGORITHMS: dict[str, Algorithm] = {"RS256": "RS256", "ES256": "ES256"}
_KID_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # base64url SHA-256, unpadded
_TMP_SUFFIX = ".tmp"
#: RFC 7638 §3.2: only the required public members, in lexicographic order, are hashed.
_THUMBPRINT_MEMBERS: dict[str, tuple[str, ...]] = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
}


class KeyStoreError(RuntimeError):
    """The key directory is in a state we refuse to sign from (corrupt or tampered)."""


def jwk_thumbprint(public_jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (base64url SHA-256): a kid that is stable across restarts
    and that a verifier could recompute, so it cannot silently point at another key."""
    kty = public_jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise ValueError(f"unsupported kty for thumbprint: {kty!r}")
    canonical = json.dumps({name: public_jwk[name] for name in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _public_jwk(key: PrivateKey) -> dict[str, Any]:
    """Public members only, built from the *public* key so private parts cannot leak."""
    if isinstance(key, rsa.RSAPrivateKey):
        full = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        full = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    # Allow-list rather than trust the library's output shape (it also adds key_ops,
    # which RFC 7517 §4.3 says should not be combined with "use").
    return {name: full[name] for name in _THUMBPRINT_MEMBERS[full["kty"]]}


def _generate(algorithm: Algorithm) -> PrivateKey:
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_SIZE)
    return ec.generate_private_key(ec.SECP256R1())


def _matches_algorithm(key: object, algorithm: Algorithm) -> TypeGuard[PrivateKey]:
    if algorithm == "RS256":
        return isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048
    return isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)


@dataclass
class _Key:
    kid: str
    alg: Algorithm
    created_at: float
    retired_at: float | None
    private_key: PrivateKey = field(repr=False, compare=False)

    def index_entry(self) -> dict[str, object]:
        return {
            "kid": self.kid,
            "alg": self.alg,
            "created_at": self.created_at,
            "retired_at": self.retired_at,
        }


class SigningKeys:
    """Keys live in ``directory`` (conventionally ``<data_dir>/oidc/``) as PEM files with
    mode 0600 (directory 0700), plus a small JSON index (kid, alg, created_at,
    retired_at). Generated on first start; rotated when the active key is older than
    ``rotation_period_s``; the previous key stays published in the JWKS for
    ``overlap_s`` after retirement so tokens signed by it still verify; keys past the
    overlap are deleted.

    The index is the commit point: key files are written before it and deleted after
    it, so a crash leaves at most unreferenced files, which the next load removes.
    A single controller process is assumed to own the directory.
    """

    def __init__(
        self,
        directory: Path,
        *,
        algorithm: Algorithm = "ES256",
        rotation_period_s: int = 7 * 86400,
        overlap_s: int = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if algorithm not in get_args(Algorithm):
            raise ValueError(f"algorithm must be one of {get_args(Algorithm)}, got {algorithm!r}")
        if rotation_period_s <= 0:
            raise ValueError("rotation_period_s must be positive")
        if overlap_s < 0:
            raise ValueError("overlap_s must not be negative")
        self.directory = Path(directory)
        self.algorithm: Algorithm = algorithm
        self.rotation_period_s = rotation_period_s
        self.overlap_s = overlap_s
        self._clock = clock
        self._keys: list[_Key] = []  # active key last
        # RLock: rotation may run in a worker thread while the event loop signs.
        self._lock = threading.RLock()

    # ----------------------------------------------------------------- public API

    def load_or_create(self) -> None:
        """Open the key directory, creating the directory and first key if missing.

        Also applies any rotation/pruning that fell due while the controller was down,
        and rotates immediately if ``algorithm`` changed since the last run.
        """
        with self._lock:
            self._ensure_directory()
            self._remove_temp_files()
            entries = self._read_index()
            now = self._clock()
            if entries is None:
                if self._key_files():
                    raise KeyStoreError(
                        f"{self.directory} contains key files but no {INDEX_NAME}; refusing to guess "
                        "which key is active. Restore the index or move the .pem files away."
                    )
                self._keys = []
                self._commit_rotation(now)
                return
            keys = [self._load_key(entry) for entry in entries]
            active = [k for k in keys if k.retired_at is None]
            if len(active) != 1:
                raise KeyStoreError(
                    f"{self.directory / INDEX_NAME} must list exactly one active key, found {len(active)}"
                )
            self._keys = [k for k in keys if k.retired_at is not None] + active
            self._remove_unreferenced_key_files()
            if self._active.alg != self.algorithm:
                logger.warning(
                    "OIDC signing algorithm changed from %s to %s; rotating key",
                    self._active.alg,
                    self.algorithm,
                )
                self._commit_rotation(now)
            else:
                self._rotate_if_due_locked(now)

    def rotate_if_due(self) -> bool:
        """Rotate if the active key has reached ``rotation_period_s``; prune expired keys.

        Returns True if a new key was created.
        """
        with self._lock:
            self._require_loaded()
            return self._rotate_if_due_locked(self._clock())

    def rotate(self) -> None:
        """Retire the active key now (e.g. suspected compromise drill) and start a new one."""
        with self._lock:
            self._require_loaded()
            self._commit_rotation(self._clock())

    @property
    def active_kid(self) -> str:
        with self._lock:
            return self._active.kid

    def jwks(self) -> dict[str, object]:
        """Public JWK Set: the active key plus retired keys still inside their overlap.

        Filtered by the clock here too, so a key disappears on time even if pruning
        has not run yet.
        """
        with self._lock:
            now = self._clock()
            published = [self._active] + [k for k in reversed(self._keys[:-1]) if not self._expired(k, now)]
            keys: list[dict[str, object]] = []
            for key in published:
                jwk: dict[str, object] = dict(_public_jwk(key.private_key))
                jwk.update(kid=key.kid, alg=key.alg, use="sig")
                keys.append(jwk)
            return {"keys": keys}

    def sign(self, claims: Mapping[str, object]) -> str:
        """Compact JWS over ``claims`` with the active key; ``kid`` tells Vault which JWK to use."""
        with self._lock:
            key = self._active
        return jwt.encode(
            dict(claims),
            key.private_key,
            algorithm=key.alg,
            headers={"kid": key.kid, "typ": "JWT"},
        )

    # ---------------------------------------------------------------- internals

    @property
    def _active(self) -> _Key:
        self._require_loaded()
        return self._keys[-1]

    def _require_loaded(self) -> None:
        if not self._keys:
            raise KeyStoreError("signing keys not loaded: call load_or_create() first")

    def _expired(self, key: _Key, now: float) -> bool:
        return key.retired_at is not None and now >= key.retired_at + self.overlap_s

    def _rotate_if_due_locked(self, now: float) -> bool:
        if now >= self._active.created_at + self.rotation_period_s:
            self._commit_rotation(now)
            return True
        expired = [k for k in self._keys if self._expired(k, now)]
        if expired:
            self._commit(list(self._keys), expired)
        return False

    def _commit_rotation(self, now: float) -> None:
        new_key = _generate(self.algorithm)
        kid = jwk_thumbprint(_public_jwk(new_key))
        pem = new_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._write_atomic(f"{kid}.pem", pem)
        keys = [
            _Key(k.kid, k.alg, k.created_at, now if k.retired_at is None else k.retired_at, k.private_key)
            for k in self._keys
        ]
        keys.append(_Key(kid, self.algorithm, now, None, new_key))
        self._commit(keys, [k for k in keys if self._expired(k, now)])
        logger.info("OIDC signing key rotated: active kid %s (%s)", kid, self.algorithm)

    def _commit(self, keys: list[_Key], expired: list[_Key]) -> None:
        """Write the index (the commit point), then swap memory state, then delete files."""
        gone = {k.kid for k in expired}
        remaining = [k for k in keys if k.kid not in gone]
        index = {"version": INDEX_VERSION, "keys": [k.index_entry() for k in remaining]}
        self._write_atomic(INDEX_NAME, (json.dumps(index, indent=2) + "\n").encode("utf-8"))
        self._keys = remaining
        for kid in sorted(gone):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / f"{kid}.pem").unlink()
            logger.info("OIDC signing key %s removed after its overlap window", kid)
        if gone:
            fsync_dir(self.directory)

    def _ensure_directory(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = self.directory.lstat()
        if not stat.S_ISDIR(st.st_mode):
            raise KeyStoreError(f"{self.directory} is not a directory (a symlink here is refused)")
        if st.st_uid != os.geteuid():
            raise PermissionError(
                f"OIDC key directory {self.directory} is owned by uid {st.st_uid}, not by the "
                f"controller (uid {os.geteuid()}); fix with chown."
            )
        if st.st_mode & 0o077:
            raise PermissionError(
                f"OIDC key directory {self.directory} has mode {stat.S_IMODE(st.st_mode):04o}; it must "
                f"not be accessible to group or others. Run: chmod 700 {self.directory}"
            )

    def _read_index(self) -> list[Mapping[str, Any]] | None:
        path = self.directory / INDEX_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise KeyStoreError(f"{path} is not valid JSON: {exc}") from exc
        if (
            not isinstance(data, dict)
            or data.get("version") != INDEX_VERSION
            or not isinstance(data.get("keys"), list)
            or not all(isinstance(e, dict) for e in data["keys"])
        ):
            raise KeyStoreError(f"{path} has an unexpected format")
        entries: list[Mapping[str, Any]] = data["keys"]
        return entries

    def _load_key(self, entry: Mapping[str, Any]) -> _Key:
        index = self.directory / INDEX_NAME
        kid, raw_alg = entry.get("kid"), entry.get("alg")
        # kid becomes a file name: validate before touching the filesystem.
        if not isinstance(kid, str) or not _KID_RE.match(kid):
            raise KeyStoreError(f"{index}: invalid kid {kid!r}")
        alg = _ALGORITHMS.get(raw_alg) if isinstance(raw_alg, str) else None
        if alg is None:
            raise KeyStoreError(f"{index}: unsupported alg {raw_alg!r} for kid {kid}")
        created_at = _timestamp(entry.get("created_at"))
        raw_retired = entry.get("retired_at")
        retired_at = None if raw_retired is None else _timestamp(raw_retired)
        if created_at is None or (raw_retired is not None and retired_at is None):
            raise KeyStoreError(f"{index}: invalid timestamps for kid {kid}")
        pem = self._read_private_file(self.directory / f"{kid}.pem")
        try:
            private_key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyStoreError(f"key file for kid {kid} is not an unencrypted PEM private key") from exc
        if not _matches_algorithm(private_key, alg):
            raise KeyStoreError(f"key file for kid {kid} does not hold a key usable for {alg}")
        if jwk_thumbprint(_public_jwk(private_key)) != kid:
            raise KeyStoreError(f"key file for kid {kid} holds a different key (thumbprint mismatch)")
        return _Key(kid, alg, created_at, retired_at, private_key)

    @staticmethod
    def _read_private_file(path: Path) -> bytes:
        """Read a key, checking the mode on the open descriptor (no stat/open race)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise KeyStoreError(f"{path} is listed in {INDEX_NAME} but missing") from exc
        except OSError as exc:  # ELOOP: a symlink could redirect us to an attacker's key
            raise KeyStoreError(f"cannot open {path} (symlinks are refused): {exc}") from exc
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise KeyStoreError(f"{path} is not a regular file")
            if st.st_mode & 0o077:
                raise PermissionError(
                    f"OIDC signing key {path} has mode {stat.S_IMODE(st.st_mode):04o}, so other users "
                    f"may have read it; refusing to use it. Run: chmod 600 {path} (and rotate the key "
                    "if it may have been copied)."
                )
            return f.read()

    def _write_atomic(self, name: str, data: bytes) -> None:
        """Temp file created 0600 (never briefly world-readable), fsync, rename, fsync dir."""
        write_atomic(self.directory / name, data, mode=0o600, tmp_suffix=_TMP_SUFFIX)

    def _remove_temp_files(self) -> None:
        for path in self.directory.glob(f".*{_TMP_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _key_files(self) -> list[Path]:
        return sorted(self.directory.glob("*.pem"))

    def _remove_unreferenced_key_files(self) -> None:
        """Delete keys a crash left behind (written but never committed, or pruned)."""
        known = {f"{k.kid}.pem" for k in self._keys}
        for path in self._key_files():
            if path.name not in known:
                logger.warning("removing unreferenced OIDC key file %s", path.name)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def _timestamp(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


class JobTokenIssuer:
    """Mints the per-job JWT that the job exchanges for a Vault token."""

    def __init__(
        self,
        keys: SigningKeys,
        *,
        issuer: str,
        lifetime_s: int = 300,
        controller_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(lifetime_s, bool) or not 1 <= lifetime_s <= MAX_LIFETIME_S:
            raise ValueError(f"lifetime_s must be between 1 and {MAX_LIFETIME_S}, got {lifetime_s!r}")
        if lifetime_s > keys.overlap_s:
            # A token signed just before rotation must stay verifiable until it expires.
            raise ValueError(
                f"lifetime_s ({lifetime_s}) must not exceed the key overlap ({keys.overlap_s}s), "
                "or tokens minted just before a rotation would stop verifying before they expire"
            )
        if not issuer:
            raise ValueError("issuer must not be empty")
        self._keys = keys
        self.issuer = issuer
        self.lifetime_s = lifetime_s
        self.controller_id = controller_id
        self._clock = clock

    def mint(self, identity: JobIdentity, audience: str | list[str], *, now: int | None = None) -> str:
        """A signed token for ``identity``; the random jti lets Vault/audit logs tell tokens apart."""
        claims = build_claims(
            identity,
            issuer=self.issuer,
            audience=audience,
            now=int(self._clock()) if now is None else now,
            lifetime_s=self.lifetime_s,
            jti=secrets.token_urlsafe(16),
            controller_id=self.controller_id,
        )
        return self._keys.sign(claims)

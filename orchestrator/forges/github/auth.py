"""How the controller proves who it is to GitHub's REST API: as a GitHub App, or with a fine-grained token.

A GitHub App signs a short JWT with its private key (RS256; `iat` 60 s in the past against clock drift, `exp` 9
minutes on, under GitHub's 10 minute cap; `iss` the app id) and exchanges it, per installation, at
`POST /app/installations/{id}/access_tokens` for an installation token that lives an hour. Tokens are cached per
installation until 5 minutes before their `expires_at`, fetched one at a time per installation (concurrent callers
wait for the one fetch), and dropped when GitHub answers 401 with them, so the next call fetches a fresh one.

The simple alternative is a fine-grained personal access token read from a file (re-read after a 401, so a rotated
file is picked up without a restart).

The key and token files must be private to the controller's user (chmod 600): a file that group or others may
access is refused, naming the file. Nothing here ever puts a key, JWT or token in a message, a log or a repr.
The HTTP exchange itself is the client's (forges/github/client.py), so that retries and rate limits are handled
in one place: the providers only hold, mint and cache.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from orchestrator.forges.protocol import ForgeError

JWT_BACKDATE_S = 60  # GitHub: set iat 60 s in the past to allow for clock drift
JWT_LIFETIME_S = 540  # exp = now + 540 s, i.e. iat + 600 s: GitHub's maximum
REFRESH_MARGIN_S = 300.0  # an installation token is replaced 5 minutes before it expires


@dataclass(frozen=True)
class InstallationToken:
    token: str = field(repr=False)
    expires_at: float  # epoch seconds


# The client's half of the exchange: (installation id, app JWT) -> the installation token GitHub issued.
TokenExchange = Callable[[int, str], Awaitable[InstallationToken]]


def read_secret_file(path: Path, what: str) -> str:
    """The stripped content of a key or token file that only its owner may access. The checks are made on the
    opened file (fstat), so the file read is the file checked. Messages name the file, never its content."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ForgeError(f"{what} {path} does not exist") from None
    except PermissionError:
        raise ForgeError(f"{what} {path} is not readable by this user (uid {os.getuid()})") from None
    except OSError as exc:
        raise ForgeError(f"{what} {path} cannot be opened: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ForgeError(f"{what} {path} is not a regular file")
        if mode & 0o077:
            raise ForgeError(
                f"{what} {path} is accessible by group/others (mode {stat.S_IMODE(mode):04o}); run chmod 600 {path}"
            )
        with os.fdopen(fd, "rb") as file:
            fd = -1  # the file object owns it now
            data = file.read()
    finally:
        if fd >= 0:
            os.close(fd)
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ForgeError(f"{what} {path} is not UTF-8 text") from None
    if not text:
        raise ForgeError(f"{what} {path} is empty")
    return text


def parse_expires_at(value: object) -> float:
    """GitHub's `expires_at` ("2026-05-04T12:00:00Z") as epoch seconds."""
    if not isinstance(value, str):
        raise ValueError("expires_at is not a string")
    moment = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    if moment.tzinfo is None:
        raise ValueError("expires_at has no time zone")
    return moment.timestamp()


@dataclass(frozen=True)
class AppCredentials:
    """A GitHub App's id and private key (loaded once; never shown)."""

    app_id: int
    private_key: RSAPrivateKey = field(repr=False)
    key_file: Path | None = None

    @classmethod
    def from_file(cls, app_id: int, path: Path) -> AppCredentials:
        if app_id < 1:
            raise ForgeError(f"GitHub App id must be a positive number, not {app_id}")
        what = f"the private key file of GitHub App {app_id}"
        text = read_secret_file(path, what)
        try:
            key = serialization.load_pem_private_key(text.encode("utf-8"), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ForgeError(
                f"{what} {path} is not an unencrypted PEM private key (download a new one from the app's settings "
                "page on GitHub: General > Private keys)"
            ) from None
        if not isinstance(key, RSAPrivateKey):
            raise ForgeError(f"{what} {path} is not an RSA key; GitHub Apps sign their JWTs with RS256")
        return cls(app_id=app_id, private_key=key, key_file=path)

    def jwt(self, now: float) -> str:
        """The app's JWT at `now`: what `POST /app/installations/{id}/access_tokens` takes as Bearer token."""
        issued = int(now)
        claims = {"iat": issued - JWT_BACKDATE_S, "exp": issued + JWT_LIFETIME_S, "iss": str(self.app_id)}
        return jwt.encode(claims, self.private_key, algorithm="RS256")


class GitHubAuth(Protocol):
    """What the client needs from a credential: a token for an installation (or the one token of a token file),
    to drop a token GitHub refused, the app's JWT for the /app endpoints, and words for error messages."""

    @property
    def app_id(self) -> int | None: ...

    def describe(self, installation_id: int | None) -> str: ...

    async def token(self, installation_id: int | None, exchange: TokenExchange) -> str: ...

    def invalidate(self, installation_id: int | None, token: str) -> None: ...

    def app_jwt(self) -> str: ...

    def secrets(self) -> tuple[str, ...]: ...


class AppTokenProvider:
    """A GitHub App's installation tokens, cached per installation until `refresh_margin_s` before they expire.
    `clock` (epoch seconds) is injectable for tests; `fetches` counts token exchanges."""

    def __init__(
        self,
        credentials: AppCredentials,
        *,
        clock: Callable[[], float] = time.time,
        refresh_margin_s: float = REFRESH_MARGIN_S,
    ) -> None:
        self.credentials = credentials
        self.clock = clock
        self.refresh_margin_s = refresh_margin_s
        self.fetches = 0
        self._cache: dict[int, InstallationToken] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    @property
    def app_id(self) -> int | None:
        return self.credentials.app_id

    def describe(self, installation_id: int | None) -> str:
        app = f"GitHub App {self.credentials.app_id}"
        return f"{app} (installation {installation_id})" if installation_id is not None else app

    def app_jwt(self) -> str:
        return self.credentials.jwt(self.clock())

    def _fresh(self, cached: InstallationToken | None) -> bool:
        return cached is not None and self.clock() < cached.expires_at - self.refresh_margin_s

    def cached_until(self, installation_id: int) -> float | None:
        """When the cached token of an installation stops being used (None: nothing cached)."""
        cached = self._cache.get(installation_id)
        return None if cached is None else cached.expires_at - self.refresh_margin_s

    async def token(self, installation_id: int | None, exchange: TokenExchange) -> str:
        if installation_id is None:
            raise ForgeError(
                f"GitHub App {self.credentials.app_id} needs an installation id: none came with the webhook and "
                "none is configured ([sources.NAME.forge] installation_id)"
            )
        cached = self._cache.get(installation_id)
        if cached is not None and self._fresh(cached):
            return cached.token
        lock = self._locks.setdefault(installation_id, asyncio.Lock())
        async with lock:
            cached = self._cache.get(installation_id)
            if cached is not None and self._fresh(cached):
                return cached.token  # fetched by the caller we waited for
            fetched = await exchange(installation_id, self.app_jwt())
            self.fetches += 1
            self._cache[installation_id] = fetched
            return fetched.token

    def invalidate(self, installation_id: int | None, token: str) -> None:
        """Forget `token` if it is still the cached one (a concurrent caller may have replaced it already)."""
        if installation_id is None:
            return
        cached = self._cache.get(installation_id)
        if cached is not None and cached.token == token:
            del self._cache[installation_id]

    def secrets(self) -> tuple[str, ...]:
        return tuple(cached.token for cached in self._cache.values())


class TokenFileAuth:
    """A fine-grained personal access token read from a file (chmod 600), re-read after GitHub refused it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reads = 0
        self._token: str | None = None

    @property
    def app_id(self) -> int | None:
        return None

    def describe(self, installation_id: int | None) -> str:
        return f"the token in {self.path}"

    def app_jwt(self) -> str:
        raise ForgeError(f"{self.describe(None)} is not a GitHub App: it has no app JWT")

    def load(self) -> str:
        token = read_secret_file(self.path, "the GitHub token file")
        if any(c.isspace() for c in token):
            raise ForgeError(f"the GitHub token file {self.path} holds more than one word; it must hold the token only")
        self._token = token
        self.reads += 1
        return token

    async def token(self, installation_id: int | None, exchange: TokenExchange) -> str:
        return self._token if self._token is not None else await asyncio.to_thread(self.load)

    def invalidate(self, installation_id: int | None, token: str) -> None:
        if self._token == token:
            self._token = None

    def secrets(self) -> tuple[str, ...]:
        return (self._token,) if self._token else ()

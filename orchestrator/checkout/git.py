"""Running git for the checkout: asyncio subprocesses with an environment built from nothing.

Why from nothing: the controller's own environment and files must not change what git does. So git sees no
system or user config (`GIT_CONFIG_NOSYSTEM`, `GIT_CONFIG_GLOBAL=/dev/null`, HOME an empty directory), no GIT_*
variable of ours (no GIT_DIR, GIT_TRACE, GIT_SSH, askpass), never prompts (`GIT_TERMINAL_PROMPT=0`), and gets its
settings through `GIT_CONFIG_COUNT`: only the remote's protocol allowed (`protocol.allow=never`, then
`protocol.<scheme>.allow=always`, so `file` only for a file:// remote and never `ext`), hooks off, no automatic gc,
fsck of everything received, no redirects (a token goes only to the configured host), no replace refs.

A credential travels in the child's environment only, never argv (`/proc/PID/cmdline` is readable by every user;
`/proc/PID/environ` only by the same user and root, who can read the credential file anyway): a token as
`http.extraHeader = Authorization: Basic …`, a deploy key as a path in `GIT_SSH_COMMAND`. Everything git prints
passes `scrub` before it reaches a message.

Each command runs in its own session; on timeout or cancellation the whole process group (git, git-remote-http,
ssh, upload-pack) is killed and reaped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import shlex
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.checkout.errors import GitMissing

MIN_VERSION = (2, 32)  # GIT_CONFIG_COUNT (2.31) and GIT_CONFIG_GLOBAL (2.32): without them the settings are lost
MASK = "[MASKED]"

# Settings every checkout command runs with (before the per-remote ones).
BASE_SETTINGS: tuple[tuple[str, str], ...] = (
    ("protocol.allow", "never"),
    ("core.hooksPath", os.devnull),
    ("core.fsmonitor", "false"),
    ("credential.helper", ""),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
    ("fetch.writeCommitGraph", "false"),
    ("fetch.recurseSubmodules", "false"),
    ("transfer.fsckObjects", "true"),
    ("http.followRedirects", "false"),
    ("protocol.version", "2"),
    ("advice.detachedHead", "false"),
)


@dataclass(frozen=True)
class GitResult:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stderr.decode("utf-8", "replace")


@dataclass(frozen=True)
class GitEnv:
    """How git runs for one remote: the environment of every child, and the secrets to scrub from its output."""

    env: Mapping[str, str]
    secrets: tuple[str, ...] = field(default=())

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, MASK)
        return text


def basic_auth(username: str, token: str) -> str:
    return base64.b64encode(f"{username}:{token}".encode()).decode()


def git_env(
    *,
    home: Path,
    scheme: str,
    token: str | None = None,
    token_username: str = "",
    deploy_key: Path | None = None,
    known_hosts: Path | None = None,
    path: str | None = None,
) -> GitEnv:
    """The environment for git talking to a remote of `scheme`, with at most one credential."""
    settings = [*BASE_SETTINGS, (f"protocol.{scheme}.allow", "always")]
    secrets: list[str] = []
    if token is not None:
        encoded = basic_auth(token_username, token)
        settings.append(("http.extraHeader", f"Authorization: Basic {encoded}"))
        secrets += [encoded, token]
    env = {
        "PATH": path if path is not None else os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "LC_ALL": "C",
        "LANG": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_NO_REPLACE_OBJECTS": "1",
        "GIT_ATTR_NOSYSTEM": "1",
        "GIT_CONFIG_COUNT": str(len(settings)),
    }
    for n, (key, value) in enumerate(settings):
        env[f"GIT_CONFIG_KEY_{n}"] = key
        env[f"GIT_CONFIG_VALUE_{n}"] = value
    if deploy_key is not None:
        if known_hosts is None:
            raise ValueError("a deploy key needs a known_hosts file")
        env["GIT_SSH_VARIANT"] = "ssh"
        env["GIT_SSH_COMMAND"] = ssh_command(deploy_key, known_hosts)
    return GitEnv(env=env, secrets=tuple(secrets))


def ssh_command(deploy_key: Path, known_hosts: Path) -> str:
    """ssh with only this key and these host keys: no agent, no ~/.ssh/config, never a prompt, never a new host."""
    return shlex.join(
        [
            "ssh",
            "-F",
            os.devnull,
            "-i",
            str(deploy_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "UpdateHostKeys=no",
        ]
    )


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """Only while git is not reaped: its pid, which names its group, cannot have been reused yet."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


async def _spawn(
    binary: str, args: Sequence[str], genv: GitEnv, cwd: Path | None, stdin: int | None
) -> asyncio.subprocess.Process:
    try:
        return await asyncio.create_subprocess_exec(
            binary,
            *args,
            cwd=cwd,
            env=dict(genv.env),
            stdin=stdin,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise GitMissing(
            f"git is not installed on the controller ({binary!r} not found on PATH); install git"
        ) from None
    except PermissionError:
        raise GitMissing(f"git ({binary!r}) cannot be executed by the controller's user") from None


async def run_git(
    binary: str, args: Sequence[str], genv: GitEnv, *, cwd: Path | None = None, stdin: bytes | None = None
) -> GitResult:
    """Runs git to its end. Cancelled (the caller's timeout): the process group is killed and reaped first."""
    proc = await _spawn(binary, args, genv, cwd, asyncio.subprocess.PIPE if stdin is not None else None)
    try:
        out, err = await proc.communicate(stdin)
    except BaseException:
        _kill_group(proc)
        with contextlib.suppress(ProcessLookupError):
            await asyncio.shield(proc.wait())
        raise
    return GitResult(proc.returncode if proc.returncode is not None else -1, out, err)


@contextlib.asynccontextmanager
async def git_process(
    binary: str, args: Sequence[str], genv: GitEnv, *, cwd: Path | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A long-running git (cat-file --batch) with pipes; killed and reaped when the block ends however it ends."""
    proc = await _spawn(binary, args, genv, cwd, asyncio.subprocess.PIPE)
    try:
        yield proc
    finally:
        _kill_group(proc)
        with contextlib.suppress(ProcessLookupError):
            await asyncio.shield(proc.wait())


_VERSION = re.compile(rb"git version (\d+)\.(\d+)")


async def check_version(binary: str, genv: GitEnv) -> tuple[int, int]:
    """Refuses a git too old to honour GIT_CONFIG_COUNT: it would run without the protocol restrictions."""
    result = await run_git(binary, ["version"], genv)
    match = _VERSION.search(result.stdout)
    if result.returncode != 0 or not match:
        raise GitMissing(f"{binary!r} --version did not answer like git: {result.text.strip()[:200]}")
    version = (int(match.group(1)), int(match.group(2)))
    if version < MIN_VERSION:
        found = ".".join(map(str, version))
        raise GitMissing(
            f"git {found} on the controller is too old for the checkout (it needs {MIN_VERSION[0]}.{MIN_VERSION[1]} "
            "or later to run with its settings in the environment); upgrade git"
        )
    return version

"""The controller's source checkout: a job's exact commit, fetched into a bare mirror, delivered as a tar archive.

Per controller and remote repository there is one bare mirror under `mirror_dir` (default `<data_dir>/checkout`),
named after the repository and a digest of its URL, so two sources pointing at different remotes never share
one. One asyncio lock per mirror serialises what changes it (init, fetch, refs): concurrent jobs of one
repository wait for each other's fetch and then find the commit there; different repositories fetch in
parallel. Reading objects for the archive needs no lock: git adds objects atomically and nothing here removes
any (gc is off).

Fetching: a commit already in the mirror is not fetched again (a commit id names its content: a later force-push
does not change what that commit is). Otherwise exactly the job's commit is asked for, shallow:
`git fetch --depth=1 <url> <sha>`. The client sends the commits already in the mirror (kept by refs
`refs/checkout/<sha>`, the newest 64) as haves, so a repeated job of a repository receives only the objects that
are new. Protocol v2 servers (git ≥ 2.18 by default, GitHub, GitLab, Gitea) serve any object they have by id;
v0 servers only with `uploadpack.allowReachableSHA1InWant` / `allowAnySHA1InWant`. When the server refuses to
fetch by id ("unadvertised object", "not our ref"), the mirror falls back to fetching the remote's branches and
tags with their whole history (`+refs/heads/*`, `+refs/tags/*` under `refs/remote/`, unshallowing the mirror)
and looks for the commit there; when it is not there either, the job fails with UnknownCommit. So a force-pushed
commit is served by a v2 server while the server still has the object, by a server allowing only reachable ids
not at all, and from the mirror when an earlier job fetched it.

Verified: the job's sha must be a full commit id (40 hex for SHA-1, 64 for SHA-256 repositories, any case): an
abbreviation is refused (InvalidSha), never resolved. After the fetch `<sha>^{commit}` must resolve to exactly
that id; refs are never trusted to say what a commit is. Everything received passes git's fsck.

Delivered: the commit's tree as an uncompressed tar (orchestrator/checkout/tree.py), after checking the total of
file contents and symlink targets against `max_bytes` (TreeTooLarge before a byte is written). Submodules, when
asked for, are fetched the same way at the commits the tree pins, from repositories of the same remote only (a
`.gitmodules` URL relative to the superproject, or an absolute one matching the remote template): a submodule
elsewhere is refused, so the credential never goes to another host and the protocol restriction holds.

Not bounded by max_bytes: what a fetch writes into the mirror before the tree is measured (only timeout_s bounds
it), and the mirrors themselves, which grow with every fetched commit (delete a mirror to reclaim it: it is a
cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.checkout.errors import (
    CheckoutNotConfigured,
    CheckoutTimeout,
    CredentialRefused,
    CredentialUnreadable,
    GitFailed,
    InvalidSha,
    RemoteUnreachable,
    RepositoryNotFound,
    SubmoduleRefused,
    TreeTooLarge,
    UnknownCommit,
)
from orchestrator.checkout.git import GitEnv, check_version, git_env, run_git
from orchestrator.checkout.remote import (
    remote_url,
    repository_of,
    resolve_relative,
    validate_repository,
    without_userinfo,
)
from orchestrator.checkout.tree import Member, commit_time, list_tree, write_tar

if TYPE_CHECKING:  # at run time config.py imports from this package, not the other way round
    from orchestrator.config import CheckoutConfig, Config

DEPTH = 1  # a job gets a tree, not a history
KEEP_REFS = 64  # newest fetched commits kept as refs: the haves of the next fetch
MAX_SUBMODULE_DEPTH = 5
ARCHIVE_NAME = "tree.tar"
_FULL_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_SHA_REFUSED = ("unadvertised object", "not our ref", "couldn't find remote ref", "no such remote ref")
_CREDENTIAL = (
    "authentication failed",
    "could not read username",
    "could not read password",
    "returned error: 401",
    "returned error: 403",
    "invalid username or password",
    "permission denied (publickey",
    "access denied",
)
_NOT_FOUND = (
    "repository not found",
    "returned error: 404",
    "does not appear to be a git repository",
    "not exported",
    "no such repository",
    "not found",
)
_UNREACHABLE = (
    "could not resolve host",
    "connection refused",
    "failed to connect",
    "couldn't connect",
    "unable to look up",
    "network is unreachable",
    "connection timed out",
    "ssl",
    "certificate",
    "unable to connect",
    "connection reset",
)


@dataclass(frozen=True)
class SubmoduleCommit:
    """A submodule delivered inside the tree, for provenance."""

    path: str
    repository: str
    commit: str
    remote: str


@dataclass(frozen=True)
class PreparedTree:
    """A job's source as a tar archive in a directory of its own, which `remove()` (or leaving `async with`)
    deletes. `size` is the archive's size, `content_bytes` what max_bytes was checked against, `files` the regular
    files and symlinks in it. `remote` is the credential-free URL the commit came from; `fetched` whether the remote
    was asked this time (False: the commit was in the mirror)."""

    archive: Path
    size: int
    content_bytes: int
    files: int
    commit: str
    repository: str
    remote: str
    submodules: tuple[SubmoduleCommit, ...] = ()
    fetched: bool = True

    def remove(self) -> None:
        shutil.rmtree(self.archive.parent, ignore_errors=True)

    async def aremove(self) -> None:
        await asyncio.to_thread(self.remove)

    async def __aenter__(self) -> PreparedTree:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aremove()


def full_sha(repository: str, sha: str) -> str:
    """The job's sha, lower-cased, if it is a full commit id; InvalidSha otherwise (an abbreviation included)."""
    value = sha.strip().lower()
    if _FULL_SHA.match(value):
        return value
    if re.fullmatch(r"[0-9a-f]{7,63}", value):
        raise InvalidSha(
            repository,
            sha,
            f"an abbreviated sha ({len(value)} hex digits) is never resolved: send the full 40-hex (SHA-1) or "
            "64-hex (SHA-256) commit id",
        )
    raise InvalidSha(repository, sha, "not a commit id (40 or 64 hex digits)")


class Checkouts:
    """Prepares job sources for one controller. `git` is the git binary (looked up on PATH)."""

    def __init__(self, config: Config, *, git: str = "git") -> None:
        self._config = config
        self._git = git
        self._locks: dict[Path, asyncio.Lock] = {}
        self._setup_lock = asyncio.Lock()
        self._ready: set[Path] = set()
        self._version: tuple[int, int] | None = None
        self.fetches = 0  # times a remote was asked (by id or for its refs), for tests and metrics

    def checkout_config(self, source: str) -> CheckoutConfig:
        src = self._config.sources.get(source)
        if src is None or src.checkout is None:
            raise CheckoutNotConfigured(source)
        return src.checkout

    async def prepare(self, source: str, repository: str, sha: str, *, submodules: bool | None = None) -> PreparedTree:
        """The tree of `repository` at `sha` from `source`'s remote; `submodules` None: the source's default.
        Raises a CheckoutError subclass with the reason the job should end with."""
        cfg = self.checkout_config(source)
        validate_repository(repository)
        commit = full_sha(repository, sha)
        url = remote_url(cfg.remote, repository)
        want_submodules = cfg.submodules if submodules is None else submodules
        try:
            async with asyncio.timeout(cfg.timeout_s):
                return await self._prepare(cfg, repository, url, commit, want_submodules)
        except TimeoutError:
            raise CheckoutTimeout(repository, url, cfg.timeout_s) from None

    async def _prepare(
        self, cfg: CheckoutConfig, repository: str, url: str, commit: str, want_submodules: bool
    ) -> PreparedTree:
        base = cfg.mirror_path(self._config.data_dir)
        await self._setup(base)
        genv = await self._env(cfg, base)
        if self._version is None:
            self._version = await check_version(self._git, genv)
        mirror, fetched = await self._ensure(cfg, genv, base, repository, url, commit)
        members: list[Member] = []
        subs: list[SubmoduleCommit] = []
        fetched |= await self._collect(
            cfg, genv, base, repository, url, commit, mirror, b"", 0, want_submodules, members, subs
        )
        content = sum(m.entry.size for m in members if m.entry.kind == "blob")
        if content > cfg.max_bytes:
            raise TreeTooLarge(repository, commit, content, cfg.max_bytes)
        mtime = await commit_time(self._git, mirror, genv, commit)
        workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="tree-", dir=base / ".tmp"))
        try:
            archive = workdir / ARCHIVE_NAME
            size = await write_tar(self._git, genv, members, archive, mtime)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, workdir, True))
            raise
        return PreparedTree(
            archive=archive,
            size=size,
            content_bytes=content,
            files=sum(1 for m in members if m.entry.kind == "blob"),
            commit=commit,
            repository=repository,
            remote=url,
            submodules=tuple(subs),
            fetched=fetched,
        )

    # --- the mirror directory and git's environment -----------------------------------------------------------

    async def _setup(self, base: Path) -> None:
        """Once per mirror directory: create it (0700), an empty HOME for git, and a fresh `.tmp` (archives a
        previous run left behind are deleted)."""
        if base in self._ready:
            return
        async with self._setup_lock:
            if base in self._ready:
                return

            def setup() -> None:
                base.mkdir(mode=0o700, parents=True, exist_ok=True)
                (base / ".home").mkdir(mode=0o700, exist_ok=True)
                shutil.rmtree(base / ".tmp", ignore_errors=True)
                (base / ".tmp").mkdir(mode=0o700)

            await asyncio.to_thread(setup)
            self._ready.add(base)

    async def _env(self, cfg: CheckoutConfig, base: Path) -> GitEnv:
        token = None
        if cfg.token_file is not None:
            path = cfg.token_file
            try:
                token = (await asyncio.to_thread(path.read_text, encoding="utf-8")).strip()
            except (OSError, UnicodeDecodeError) as exc:
                why = getattr(exc, "strerror", None) or type(exc).__name__
                raise CredentialUnreadable(
                    f"cannot read the checkout's token_file {path}: {why}; fix the file (chmod 600, owned by the "
                    "controller's user)",
                    remote=cfg.remote,
                ) from None
            if not token:
                raise CredentialUnreadable(f"the checkout's token_file {path} is empty", remote=cfg.remote)
        return git_env(
            home=base / ".home",
            scheme=cfg.scheme,
            token=token,
            token_username=cfg.token_username,
            deploy_key=cfg.deploy_key_file,
            known_hosts=cfg.known_hosts_file,
        )

    def _mirror(self, base: Path, repository: str, url: str, commit: str) -> Path:
        fmt = "sha256" if len(commit) == 64 else "sha1"
        digest = hashlib.sha256(f"{url}\0{fmt}".encode()).hexdigest()[:16]
        return base / f"{repository.replace('/', '_')[:80]}-{digest}.git"

    def _lock(self, mirror: Path) -> asyncio.Lock:
        return self._locks.setdefault(mirror, asyncio.Lock())

    async def _git_ok(self, mirror: Path, genv: GitEnv, *args: str) -> bytes | None:
        result = await run_git(self._git, [f"--git-dir={mirror}", *args], genv)
        return result.stdout if result.returncode == 0 else None

    # --- fetching ---------------------------------------------------------------------------------------------

    async def _ensure(
        self, cfg: CheckoutConfig, genv: GitEnv, base: Path, repository: str, url: str, commit: str
    ) -> tuple[Path, bool]:
        """The mirror holding `commit`, verified; whether the remote was asked."""
        mirror = self._mirror(base, repository, url, commit)
        fetched = False
        async with self._lock(mirror):
            await self._init(mirror, base, genv, sha256=len(commit) == 64)
            if await self._git_ok(mirror, genv, "cat-file", "-e", f"{commit}^{{commit}}") is None:
                await self._fetch(cfg, genv, mirror, repository, url, commit)
                fetched = True
            resolved = await self._git_ok(
                mirror, genv, "rev-parse", "--verify", "--end-of-options", f"{commit}^{{commit}}"
            )
            if resolved is None:
                kind = await self._git_ok(mirror, genv, "cat-file", "-t", commit)
                what = f"{commit} is a {kind.decode().strip()}, not a commit" if kind else "the fetch did not bring it"
                raise UnknownCommit(repository, url, commit, what)
            if resolved.decode().strip() != commit:
                raise GitFailed(
                    f"{repository}: {commit} resolved to {resolved.decode().strip()} in the mirror {mirror}; refusing "
                    "to deliver it (delete the mirror)",
                    repository=repository,
                    remote=url,
                )
            await self._pin(mirror, genv, commit)
        return mirror, fetched

    async def _init(self, mirror: Path, base: Path, genv: GitEnv, *, sha256: bool) -> None:
        """A new bare mirror, created aside and renamed into place so a crash never leaves half of one."""
        if await asyncio.to_thread((mirror / "HEAD").exists):
            return
        staging = base / ".tmp" / f"init-{secrets.token_hex(6)}"
        args = ["init", "--bare", "--quiet", "--template="]
        if sha256:
            args.append("--object-format=sha256")
        result = await run_git(self._git, [*args, str(staging)], genv)
        if result.returncode != 0:
            raise GitFailed(f"cannot create the mirror {mirror}: {genv.scrub(result.text)[-300:]}")
        await asyncio.to_thread(os.rename, staging, mirror)

    async def _fetch(
        self, cfg: CheckoutConfig, genv: GitEnv, mirror: Path, repository: str, url: str, commit: str
    ) -> None:
        self.fetches += 1
        args = [f"--git-dir={mirror}", "fetch", "--quiet", "--no-tags", "--no-recurse-submodules"]
        result = await run_git(self._git, [*args, f"--depth={DEPTH}", "--end-of-options", url, commit], genv)
        if result.returncode == 0:
            return
        text = genv.scrub(result.text)
        if not any(s in text.lower() for s in _SHA_REFUSED):
            raise self._classify(cfg, text, repository, url)
        # The server does not hand out this id (a v0 server without allow*SHA1InWant, or it has no such object):
        # look for it in the history of the remote's branches and tags.
        self.fetches += 1
        shallow = await asyncio.to_thread((mirror / "shallow").exists)
        refspecs = ["+refs/heads/*:refs/remote/heads/*", "+refs/tags/*:refs/remote/tags/*"]
        unshallow = ["--unshallow"] if shallow else []
        result = await run_git(self._git, [*args, "--prune", *unshallow, "--end-of-options", url, *refspecs], genv)
        if result.returncode != 0:
            raise self._classify(cfg, genv.scrub(result.text), repository, url)
        if await self._git_ok(mirror, genv, "cat-file", "-e", f"{commit}^{{commit}}") is None:
            raise UnknownCommit(
                repository, url, commit, "the server would not send it by id and no branch or tag reaches it"
            )

    async def _pin(self, mirror: Path, genv: GitEnv, commit: str) -> None:
        """`refs/checkout/<sha>` for the fetched commit; only the newest KEEP_REFS stay (the haves of later
        fetches; the objects of older ones stay in the mirror)."""
        await self._git_ok(mirror, genv, "update-ref", f"refs/checkout/{commit}", commit)
        listed = await self._git_ok(
            mirror, genv, "for-each-ref", "--sort=-committerdate", "--format=%(refname)", "refs/checkout/"
        )
        stale = (listed or b"").split()[KEEP_REFS:]
        if stale:
            commands = b"".join(b"delete " + ref + b"\n" for ref in stale)
            await run_git(self._git, [f"--git-dir={mirror}", "update-ref", "--stdin"], genv, stdin=commands)

    def _classify(self, cfg: CheckoutConfig, text: str, repository: str, url: str) -> Exception:
        """git's failure (scrubbed) as the refusal the operator can act on."""
        low = text.lower()
        last = " / ".join(line.strip() for line in text.strip().splitlines()[-3:])[-400:]
        where = f"{repository} at {url}"
        if "host key verification failed" in low:
            return RemoteUnreachable(
                f"the ssh host key of {url} is not in known_hosts_file {cfg.known_hosts_file} (or it changed): add "
                "the server's key, checked out of band",
                repository=repository,
                remote=url,
            )
        if any(s in low for s in _CREDENTIAL):
            if cfg.token_file is not None:
                reason = (
                    f"remote refused the credential in token_file {cfg.token_file} ({where}): renew the token or "
                    "give it read access to the repository"
                )
            elif cfg.deploy_key_file is not None:
                reason = (
                    f"remote refused the deploy key in deploy_key_file {cfg.deploy_key_file} ({where}): add its "
                    "public key to the repository's deploy keys"
                )
            else:
                reason = f"remote asks for a credential ({where}) and the source's checkout has none: set token_file"
            return CredentialRefused(reason, repository=repository, remote=url)
        if any(s in low for s in _NOT_FOUND):
            return RepositoryNotFound(repository, url, cfg.token_file is not None or cfg.deploy_key_file is not None)
        if any(s in low for s in _UNREACHABLE):
            return RemoteUnreachable(f"cannot reach {url} for {repository}: {last}", repository=repository, remote=url)
        return GitFailed(f"git fetch of {where} failed: {last}", repository=repository, remote=url)

    # --- the tree, with submodules ----------------------------------------------------------------------------

    async def _collect(
        self,
        cfg: CheckoutConfig,
        genv: GitEnv,
        base: Path,
        repository: str,
        url: str,
        commit: str,
        mirror: Path,
        prefix: bytes,
        depth: int,
        want_submodules: bool,
        members: list[Member],
        subs: list[SubmoduleCommit],
    ) -> bool:
        """Appends the commit's entries (and its submodules' under their paths) to `members`; whether a remote was
        asked for a submodule."""
        fetched = False
        modules: dict[bytes, str] | None = None
        for entry in await list_tree(self._git, mirror, genv, commit, repository):
            path = prefix + entry.path
            members.append(Member(mirror, entry, path))
            if entry.kind != "commit" or not want_submodules:
                continue
            shown = path.decode("utf-8", "backslashreplace")
            if depth >= MAX_SUBMODULE_DEPTH:
                raise SubmoduleRefused(
                    f"{repository} at {commit}: submodule {shown} is nested more than {MAX_SUBMODULE_DEPTH} deep",
                    repository=repository,
                )
            if modules is None:
                modules = await self._gitmodules(mirror, genv, commit)
            declared = modules.get(entry.path)
            if declared is None:
                raise SubmoduleRefused(
                    f"{repository} at {commit}: submodule {shown} has no url in .gitmodules", repository=repository
                )
            absolute = resolve_relative(url, declared) if declared.startswith(("./", "../")) else declared
            sub_repository = repository_of(cfg.remote, absolute)
            if sub_repository is None:
                raise SubmoduleRefused(
                    f"{repository} at {commit}: submodule {shown} points at {without_userinfo(declared)}, which is "
                    f"not a repository of the remote {cfg.remote}; only submodules on the same remote are fetched "
                    "(with the same credential)",
                    repository=repository,
                )
            sub_url = remote_url(cfg.remote, sub_repository)
            sub_mirror, sub_fetched = await self._ensure(cfg, genv, base, sub_repository, sub_url, entry.oid)
            fetched |= sub_fetched
            subs.append(SubmoduleCommit(shown, sub_repository, entry.oid, sub_url))
            fetched |= await self._collect(
                cfg,
                genv,
                base,
                sub_repository,
                sub_url,
                entry.oid,
                sub_mirror,
                path + b"/",
                depth + 1,
                True,
                members,
                subs,
            )
        return fetched

    async def _gitmodules(self, mirror: Path, genv: GitEnv, commit: str) -> dict[bytes, str]:
        """path -> url from the commit's .gitmodules (parsed by git, includes not followed)."""
        listed = await self._git_ok(mirror, genv, "config", "--null", f"--blob={commit}:.gitmodules", "--list")
        if listed is None:
            return {}
        names: dict[str, dict[str, bytes]] = {}
        for record in listed.split(b"\0"):
            key, _, value = record.partition(b"\n")
            match = re.fullmatch(rb"submodule\.(.+)\.(path|url)", key)
            if match:
                names.setdefault(match.group(1).decode("utf-8", "surrogateescape"), {})[match.group(2).decode()] = value
        modules = {}
        for entry in names.values():
            if "path" in entry and "url" in entry:
                with contextlib.suppress(UnicodeDecodeError):
                    modules[entry["path"].rstrip(b"/")] = entry["url"].decode()
        return modules

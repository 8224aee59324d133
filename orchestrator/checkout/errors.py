"""Why a checkout was refused: one typed error per cause the operator or the sender can act on.

The caller ends the job in `error` with `reason` before any container starts. Every message names the repository
and the remote (never with a credential in it: remotes carry none, and git's own text is scrubbed before it gets
here) and says what to fix.
"""

from __future__ import annotations


class CheckoutError(Exception):
    """Base of every refusal; `reason` is the one line a job's `error` state shows."""

    def __init__(self, reason: str, *, repository: str | None = None, remote: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.repository = repository
        self.remote = remote


class CheckoutNotConfigured(CheckoutError):
    def __init__(self, source: str) -> None:
        super().__init__(
            f"source {source!r} has no [sources.{source}.checkout] section: the controller does not know where its "
            "repositories live; add one, or send the job with checkout disabled"
        )


class InvalidRepository(CheckoutError):
    def __init__(self, repository: str, why: str) -> None:
        super().__init__(
            f"repository {repository!r} cannot be checked out: {why} (expected owner/name, e.g. org/app)",
            repository=repository,
        )


class InvalidSha(CheckoutError):
    """Also an abbreviated sha: a prefix is resolved by nobody. Servers do not accept one in a fetch, and resolving
    it against the mirror or the remote's refs would let whoever can push a commit with the same prefix (28 bits
    for 7 hex digits is minutes of brute force) choose what the job runs."""

    def __init__(self, repository: str, sha: str, why: str) -> None:
        super().__init__(f"{repository}: cannot check out {sha!r}: {why}", repository=repository)


class UnknownCommit(CheckoutError):
    def __init__(self, repository: str, remote: str, sha: str, detail: str = "") -> None:
        super().__init__(
            f"the remote has no commit {sha} ({repository} at {remote}){': ' + detail if detail else ''}; check "
            "the job's sha (was the branch force-pushed or the commit never pushed?)",
            repository=repository,
            remote=remote,
        )
        self.sha = sha


class CredentialRefused(CheckoutError):
    """401/403 over HTTP, a refused key over ssh, or no credential where the remote wants one."""


class CredentialUnreadable(CheckoutError):
    pass


class RepositoryNotFound(CheckoutError):
    def __init__(self, repository: str, remote: str, credentialed: bool) -> None:
        hint = (
            "check the repository name and that the credential may read it"
            if credentialed
            else "check the repository name and the remote template (a private repository needs a credential)"
        )
        super().__init__(f"repository {repository} not found at {remote}: {hint}", repository=repository, remote=remote)


class RemoteUnreachable(CheckoutError):
    pass


class TreeTooLarge(CheckoutError):
    def __init__(self, repository: str, sha: str, size: int, cap: int, *, at_least: bool = False) -> None:
        more = "more than " if at_least else ""
        super().__init__(
            f"{repository} at {sha}: the tree is {more}{size} bytes, over the checkout cap of {cap} bytes "
            "(max_bytes of the source's checkout); raise the cap or make the repository smaller",
            repository=repository,
        )
        self.sha = sha
        self.size = size
        self.cap = cap


class CheckoutTimeout(CheckoutError):
    def __init__(self, repository: str, remote: str, timeout_s: float) -> None:
        super().__init__(
            f"checkout of {repository} from {remote} took longer than {timeout_s:g} s (timeout_s of the source's "
            "checkout); is the remote slow or the repository very large?",
            repository=repository,
            remote=remote,
        )


class GitMissing(CheckoutError):
    pass


class UnsafeTree(CheckoutError):
    """A tree git's own fsck would have refused (a `..` or `.git` path); never delivered."""


class SubmoduleRefused(CheckoutError):
    pass


class GitFailed(CheckoutError):
    """Anything else git reported; the message carries git's last lines, scrubbed."""

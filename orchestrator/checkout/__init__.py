"""Source checkout by the controller (issue 16): a job's exact commit from its source's remote, through a bare
mirror cache, delivered as a tar archive of its tree. `Checkouts.prepare` is the entry point; every refusal is a
`CheckoutError` whose `reason` the job's `error` state carries."""

from orchestrator.checkout.checkouts import Checkouts, PreparedTree, SubmoduleCommit, full_sha
from orchestrator.checkout.errors import (
    CheckoutError,
    CheckoutNotConfigured,
    CheckoutTimeout,
    CredentialRefused,
    CredentialUnreadable,
    GitFailed,
    GitMissing,
    InvalidRepository,
    InvalidSha,
    RemoteUnreachable,
    RepositoryNotFound,
    SubmoduleRefused,
    TreeTooLarge,
    UnknownCommit,
    UnsafeTree,
)
from orchestrator.checkout.remote import remote_url, validate_repository

__all__ = [
    "CheckoutError",
    "CheckoutNotConfigured",
    "CheckoutTimeout",
    "Checkouts",
    "CredentialRefused",
    "CredentialUnreadable",
    "GitFailed",
    "GitMissing",
    "InvalidRepository",
    "InvalidSha",
    "PreparedTree",
    "RemoteUnreachable",
    "RepositoryNotFound",
    "SubmoduleCommit",
    "SubmoduleRefused",
    "TreeTooLarge",
    "UnknownCommit",
    "UnsafeTree",
    "full_sha",
    "remote_url",
    "validate_repository",
]

"""Remote URL templates and repository names: pure, shared by the config validation and the checkout.

A template is a URL with one `{repository}` placeholder in its path: `https://git.example/{repository}.git`,
`ssh://git@git.example/{repository}.git`, `git://mirror.example/{repository}`, `file:///srv/git/{repository}.git`.
The repository name comes from a webhook, so it is checked before it becomes part of a URL or a path: owner/name
segments of letters, digits, `._-`, none starting with `.` or `-` (no `..`, no option-looking argument to git).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal
from urllib.parse import urlsplit

from orchestrator.checkout.errors import InvalidRepository

Scheme = Literal["https", "http", "ssh", "git", "file"]
SCHEMES: tuple[Scheme, ...] = ("https", "http", "ssh", "git", "file")
PLACEHOLDER = "{repository}"
MAX_SEGMENTS = 8  # owner/name; GitLab's nested groups: group/sub/.../name
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def validate_repository(repository: str) -> str:
    """The name as given, or InvalidRepository saying why."""
    if len(repository) > 256:
        raise InvalidRepository(repository[:64] + "…", "longer than 256 characters")
    parts = repository.split("/")
    if not 2 <= len(parts) <= MAX_SEGMENTS:
        raise InvalidRepository(repository, f"needs 2 to {MAX_SEGMENTS} segments separated by '/'")
    for part in parts:
        if not part:
            raise InvalidRepository(repository, "empty segment (leading, trailing or double '/')")
        if ".." in part:
            raise InvalidRepository(repository, "'..' is not allowed")
        if not _SEGMENT.match(part):
            raise InvalidRepository(
                repository, f"segment {part!r}: only letters, digits and ._- and not starting with '.' or '-'"
            )
    return repository


def check_remote_template(template: str) -> Scheme:
    """The template's scheme, or ValueError with what is wrong (for the config's field validator)."""
    if template.count(PLACEHOLDER) != 1:
        raise ValueError("remote must contain {repository} exactly once, e.g. https://git.example/{repository}.git")
    rest = template.replace(PLACEHOLDER, "")
    if "{" in rest or "}" in rest:
        raise ValueError("remote: the only placeholder is {repository}")
    if any(c.isspace() or ord(c) < 0x20 or c in "\\\x7f" for c in template):
        raise ValueError("remote: no whitespace, control characters or backslashes")
    url = urlsplit(template)
    scheme = url.scheme
    if scheme not in SCHEMES:
        raise ValueError(
            f"remote: scheme must be one of {', '.join(SCHEMES)} (an ssh remote as ssh://user@host/path, not "
            f"user@host:path), got {template!r}"
        )
    if url.query or url.fragment or "?" in template or "#" in template:
        raise ValueError("remote: no query or fragment")
    if PLACEHOLDER not in url.path:
        raise ValueError("remote: {repository} must be in the URL's path")
    if scheme == "file":
        if url.netloc:
            raise ValueError("remote: a file remote is file:///absolute/path/{repository}.git (no host)")
        return "file"
    if not url.hostname:
        raise ValueError("remote: no host")
    try:
        url.port  # noqa: B018 -- raises on a malformed port
    except ValueError:
        raise ValueError("remote: invalid port") from None
    if url.password is not None:
        raise ValueError("remote: no password in the URL; use token_file or deploy_key_file")
    if url.username is not None and scheme != "ssh":
        raise ValueError("remote: no user name in an http(s) or git URL; set token_username with token_file")
    return scheme


def is_loopback(template: str) -> bool:
    """Whether the remote's host is this machine (plain http may then carry a token: it never leaves the host)."""
    host = urlsplit(template).hostname or ""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def remote_url(template: str, repository: str) -> str:
    """The URL of `repository` on the remote `template` (validated, credential-free)."""
    check_remote_template(template)
    return template.replace(PLACEHOLDER, validate_repository(repository))


def repository_of(template: str, url: str) -> str | None:
    """The repository name `url` names on the remote `template`, or None when it is not one of its repositories.
    Accepts the URL with or without the template's `.git` suffix (`https://host/org/lib` for `.../{repository}.git`);
    the name must pass validate_repository."""
    prefix, suffix = template.split(PLACEHOLDER)
    candidates = [url]
    if suffix.endswith(".git") and not url.endswith(".git"):
        candidates.append(url + ".git")
    for candidate in candidates:
        if candidate.startswith(prefix) and candidate.endswith(suffix) and len(candidate) > len(prefix + suffix):
            name = candidate[len(prefix) : len(candidate) - len(suffix)]
            try:
                return validate_repository(name)
            except InvalidRepository:
                return None
    return None


def resolve_relative(base_url: str, relative: str) -> str:
    """A submodule's relative URL as git resolves it against the superproject's URL: each leading `../` removes
    the last path component of the base, `./` removes none (`https://h/org/app.git` + `../lib.git` ->
    `https://h/org/lib.git`)."""
    base = base_url.rstrip("/")
    rest = relative
    while True:
        if rest.startswith("./"):
            rest = rest[2:]
        elif rest.startswith("../"):
            base = base.rsplit("/", 1)[0]
            rest = rest[3:]
        else:
            break
    return f"{base}/{rest}"


def without_userinfo(url: str) -> str:
    """For messages: a URL from a repository's .gitmodules may carry a user and password."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1***@", url, flags=re.IGNORECASE)

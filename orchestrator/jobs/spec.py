"""The job spec on the wire: what a webhook body must contain. Versioned so senders can be upgraded safely."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails

JOB_ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
# Names the runtime sets itself; a job overriding them could confuse its own shell or escape the workspace.
RESERVED_ENV = frozenset(
    {"HOME", "PATH", "USER", "PWD", "SHELL", "IFS", "ENV", "BASH_ENV", "LD_PRELOAD", "LD_LIBRARY_PATH"}
    | {"CI", "CI_REPOSITORY", "CI_REF", "CI_SHA", "CI_POOL"}
)
RESERVED_ENV_PREFIXES = ("ORCHESTRATOR_", "CI_JOB_")


def checked_job_id(job_id: str) -> str:
    """Job ids become file names (logs, attestations); re-checked there so a path traversal stays impossible even
    if a caller skipped the spec."""
    if not re.fullmatch(JOB_ID_PATTERN, job_id) or job_id in {".", ".."}:
        raise ValueError(f"invalid job id {job_id!r}")
    return job_id


def is_reserved_env(name: str) -> bool:
    return name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES)


def _utf8_strings(value: object, where: str) -> None:
    """JSON allows lone surrogate escapes ("\\ud800") that no UTF-8 store, log or shell can hold."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{where} contains an unpaired surrogate escape (not valid Unicode text)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _utf8_strings(key, where)
            _utf8_strings(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _utf8_strings(item, f"{where}[{index}]")


def _refuse_lone_surrogates(model: type[BaseModel], data: object) -> None:
    try:
        _utf8_strings(data, "body")
    except ValueError as exc:
        detail = InitErrorDetails(type="value_error", loc=(), input=data, ctx={"error": exc})
        raise ValidationError.from_exception_data(model.__name__, [detail]) from None


class _Wire(BaseModel):
    """Specs are checked for lone surrogates where Python objects come in (`model_validate`); pydantic's JSON
    parser refuses them itself. Not a `mode="before"` validator: that makes pydantic build the whole JSON body as
    Python objects before validating it, a third of the cost of parsing a webhook. Not in `__init__` either: a
    model with its own `__init__` is validated twice. Keyword construction is left to code, not senders."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        _refuse_lone_surrogates(cls, obj)
        return super().model_validate(obj, **kwargs)


class SecretRequest(_Wire):
    """One value the job wants from the credentials backend; the value itself never travels in the spec."""

    path: str = Field(min_length=1, max_length=512, pattern=r"^[A-Za-z0-9._/-]+$")
    key: str = Field(min_length=1, max_length=256)
    name: str = Field(pattern=ENV_NAME_PATTERN, description="file name under /run/secrets, or env var name")
    deliver: Literal["file", "env"] = "file"
    engine: Literal["kv2", "generic"] = "kv2"
    mount: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]+$")

    @field_validator("mount")
    @classmethod
    def _mount_not_dots(cls, mount: str | None) -> str | None:
        if mount in {".", ".."}:
            raise ValueError("mount must not be '.' or '..'")
        return mount

    @model_validator(mode="after")
    def _env_name_allowed(self) -> SecretRequest:
        if self.deliver == "env" and is_reserved_env(self.name):
            raise ValueError(f"env name {self.name!r} is reserved by the runner")
        return self

    @field_validator("path")
    @classmethod
    def _no_traversal(cls, path: str) -> str:
        if any(part in {"", ".", ".."} for part in path.strip("/").split("/")):
            raise ValueError("path segments must not be empty, '.' or '..'")
        return path.strip("/")


class RunnerRequest(_Wire):
    """A single-use forge runner a forge source asked for (forges/intake.py builds it; no sender can: admission
    refuses specs carrying one from any other source). The job's container runs the forge's agent with a one-time
    registration instead of our commands."""

    source: str = Field(min_length=1, max_length=63)
    scope_kind: Literal["repo", "org"]
    scope_name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9._/-]+$")
    installation_id: int | None = None
    labels: list[str] = Field(min_length=1, max_length=100)  # registered with the runner: the pool's labels
    runner_group_id: int | None = None
    trigger_job_id: int = Field(ge=0)  # the forge job whose `queued` delivery asked for this runner
    trigger_run_id: int = Field(0, ge=0)


# A workspace-relative path or glob: what artifacts and caches name. No whitespace (the job's shell expands the
# globs), no leading '-' or '/', no '..' component: a pattern can only ever name something under /workspace.
WORKSPACE_PATTERN = r"^[A-Za-z0-9._*?\[\]@+=,%-][A-Za-z0-9._*?\[\]@+=,%/-]{0,1023}$"


def checked_workspace_pattern(pattern: str, where: str) -> str:
    parts = pattern.split("/")
    if pattern.startswith("-") or any(part == ".." for part in parts) or "" in parts[:-1]:
        raise ValueError(f"{where}: {pattern!r} must stay under /workspace (no '..', no leading '-' or '/')")
    return pattern


class ArtifactReports(_Wire):
    """Reports the attestation reads: a JUnit XML file (test totals) and an SBOM (CycloneDX or SPDX JSON)."""

    junit: str | None = Field(None, pattern=WORKSPACE_PATTERN)
    sbom: str | None = Field(None, pattern=WORKSPACE_PATTERN)

    @field_validator("junit", "sbom")
    @classmethod
    def _inside(cls, path: str | None) -> str | None:
        if path is not None and any(c in path for c in "*?["):
            raise ValueError(f"a report is one file, not a glob: {path!r}")
        return None if path is None else checked_workspace_pattern(path, "artifacts.reports")


class ArtifactsRequest(_Wire):
    """Files that come out of the container after the script: each gets its sha256 and is a subject of the job's
    attestation. `when`: on_success (default) or always (also after a failing script; never after a timeout or
    cancel, whose container is stopped)."""

    paths: list[Annotated[str, Field(pattern=WORKSPACE_PATTERN)]] = Field(default_factory=list, max_length=100)
    when: Literal["on_success", "always"] = "on_success"
    max_bytes: int | None = Field(None, ge=1, description="at most the pool's artifacts_max_bytes")
    reports: ArtifactReports = Field(default_factory=ArtifactReports)

    @field_validator("paths")
    @classmethod
    def _inside(cls, paths: list[str]) -> list[str]:
        return [checked_workspace_pattern(p, "artifacts.paths") for p in paths]

    @model_validator(mode="after")
    def _something(self) -> Self:
        if not self.paths and self.reports.junit is None and self.reports.sbom is None:
            raise ValueError("artifacts needs paths or reports")
        return self


class CacheRequest(_Wire):
    """Workspace paths restored before the script and saved after its success, under `key` (plus the digest of
    `key_files` of the checkout, e.g. a lockfile, so a dependency change gets a new cache). Scoped to the
    repository and the job's ref: a ref reads its own entry, else the default branch's; it writes only its own."""

    key: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    paths: list[Annotated[str, Field(pattern=WORKSPACE_PATTERN)]] = Field(min_length=1, max_length=50)
    key_files: list[Annotated[str, Field(pattern=WORKSPACE_PATTERN)]] = Field(default_factory=list, max_length=20)

    @field_validator("paths", "key_files")
    @classmethod
    def _inside(cls, paths: list[str]) -> list[str]:
        return [checked_workspace_pattern(p, "cache") for p in paths]


class JobSpec(_Wire):
    version: Literal[1] = 1
    id: str = Field(pattern=JOB_ID_PATTERN)

    @field_validator("id")
    @classmethod
    def _not_dots(cls, job_id: str) -> str:
        if job_id in {".", ".."}:  # the pattern (checked first) admits them; as path components they would escape
            raise ValueError(f"invalid job id {job_id!r}")
        return job_id

    pool: str = Field(min_length=1, max_length=63)
    repository: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9._/-]+$")
    ref: str = Field(min_length=1, max_length=256)
    sha: str = Field(pattern=r"^[0-9a-fA-F]{7,64}$")
    commands: list[str] = Field(min_length=1, max_length=500)
    env: dict[str, str] = Field(default_factory=dict)
    timeout_s: int | None = Field(None, ge=1)
    secrets: list[SecretRequest] = Field(default_factory=list, max_length=100)
    runner: RunnerRequest | None = None
    sender: str | None = Field(
        None, min_length=1, max_length=256,
        description="who triggered the job (e.g. the forge login of the push): an approver may not be them",
    )  # fmt: skip
    checkout: bool = Field(True, description="false: no source checkout even where the source configures one")
    submodules: bool = Field(False, description="also check out the commit's submodules")
    artifacts: ArtifactsRequest | None = None
    cache: CacheRequest | None = None
    callback_url: str | None = Field(
        None,
        min_length=1,
        max_length=2048,
        description="status callbacks of this job go here; must be within the source's callbacks.allowed_url_prefixes",
    )

    @field_validator("ref")
    @classmethod
    def _printable_ref(cls, ref: str) -> str:
        if not ref.isprintable() or ":" in ref:
            raise ValueError("ref must be printable and contain no ':' (it is part of the OIDC subject)")
        return ref

    @field_validator("commands")
    @classmethod
    def _commands(cls, commands: list[str]) -> list[str]:
        for i, cmd in enumerate(commands):
            if not cmd.strip():
                raise ValueError(f"commands[{i}] is empty")
            if "\x00" in cmd:
                raise ValueError(f"commands[{i}] contains a NUL byte")
            if len(cmd) > 64 * 1024:
                raise ValueError(f"commands[{i}] is longer than 64 KiB")
        return commands

    @field_validator("env")
    @classmethod
    def _env(cls, env: dict[str, str]) -> dict[str, str]:
        if len(env) > 200:
            raise ValueError("at most 200 environment variables")
        for name, value in env.items():
            if not re.fullmatch(ENV_NAME_PATTERN, name):
                raise ValueError(f"env name {name!r} is not a valid shell variable name")
            if is_reserved_env(name):
                raise ValueError(f"env name {name!r} is reserved by the runner")
            if "\x00" in value or len(value) > 32 * 1024:
                raise ValueError(f"env {name!r} has a NUL byte or is longer than 32 KiB")
        return env

    @field_validator("secrets")
    @classmethod
    def _unique_secret_names(cls, secrets: list[SecretRequest]) -> list[SecretRequest]:
        seen: set[str] = set()
        for s in secrets:
            if s.name in seen:
                raise ValueError(f"secret name {s.name!r} is used twice")
            seen.add(s.name)
        return secrets

"""Pool + job → Docker create arguments, with the hardening built in. Pure, so every default is unit-tested.

The job's commands (and, later, its secrets) never appear in the create arguments: they travel over the
container's stdin as a script that a fixed bootstrap writes to a private tmpfs, so `docker inspect` shows only
what is safe to show.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from orchestrator.config import PoolConfig
from orchestrator.jobs.spec import JobSpec

LABEL_PREFIX = "io.runner-orchestrator."
LABEL_MANAGED = LABEL_PREFIX + "managed"
LABEL_CONTROLLER = LABEL_PREFIX + "controller-id"
LABEL_JOB = LABEL_PREFIX + "job-id"
LABEL_POOL = LABEL_PREFIX + "pool"
LABEL_ATTEMPT = LABEL_PREFIX + "attempt"

WORKSPACE = "/workspace"
JOB_DIR = "/run/job"
SECRETS_DIR = "/run/secrets"

# PID 1 (after docker-init) reads a length-prefixed script from stdin into the private tmpfs, then runs it.
# It holds no job data, so it is identical for every job and safe to show in `docker inspect`.
BOOTSTRAP = (
    f"set -eu; umask 077; chmod 700 {JOB_DIR} {SECRETS_DIR} {WORKSPACE}; IFS= read -r n; "
    f'head -c "$n" > {JOB_DIR}/script.sh; '
    f"exec /bin/sh {JOB_DIR}/script.sh < /dev/null"
)


@dataclass(frozen=True)
class SecretFile:
    """A value delivered to the job; kept out of reprs so it cannot end up in a log line by accident."""

    name: str
    value: str = field(repr=False)
    deliver: str = "file"


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    create_kwargs: dict[str, object]


def container_name(controller_id: str, job_id: str, attempt: int) -> str:
    # Docker names must start with an alphanumeric; job ids may start with '.', '-' or '_'.
    return f"orch-{controller_id}-{job_id}-a{attempt}"


def labels_for(pool_name: str, pool: PoolConfig, controller_id: str, job_id: str, attempt: int) -> dict[str, str]:
    labels = {k: v for k, v in pool.labels.items() if not k.startswith(LABEL_PREFIX)}
    labels.update(
        {
            LABEL_MANAGED: "true",
            LABEL_CONTROLLER: controller_id,
            LABEL_JOB: job_id,
            LABEL_POOL: pool_name,
            LABEL_ATTEMPT: str(attempt),
        }
    )
    return labels


def build_container_spec(
    spec: JobSpec,
    pool: PoolConfig,
    *,
    controller_id: str,
    attempt: int = 1,
    init: bool = True,
) -> ContainerSpec:
    uid, _, gid = pool.user.partition(":")
    gid = gid or uid
    owner = f"uid={uid},gid={gid}"
    env = {
        "HOME": WORKSPACE,
        "CI": "true",
        "CI_JOB_ID": spec.id,
        "CI_REPOSITORY": spec.repository,
        "CI_REF": spec.ref,
        "CI_SHA": spec.sha,
        "CI_POOL": spec.pool,
        **spec.env,
    }
    kwargs: dict[str, object] = {
        "image": pool.image,
        "entrypoint": ["/bin/sh", "-c", BOOTSTRAP],
        "command": [],
        "user": f"{uid}:{gid}",
        "working_dir": WORKSPACE,
        "environment": env,
        "labels": labels_for(spec.pool, pool, controller_id, spec.id, attempt),
        "hostname": "job",
        "stdin_open": True,
        "tty": False,
        "detach": True,
        "init": init,
        "privileged": False,
        "cap_drop": ["ALL"],
        "cap_add": [],
        "security_opt": ["no-new-privileges:true"],
        "read_only": True,
        "tmpfs": {
            "/tmp": f"rw,noexec,nosuid,nodev,size={pool.tmp_size},mode=1777",  # noqa: S108 - a path inside the container
            WORKSPACE: f"rw,exec,nosuid,nodev,size={pool.workspace_size},mode=0700,{owner}",
            JOB_DIR: f"rw,noexec,nosuid,nodev,size=8m,mode=0700,{owner}",
            SECRETS_DIR: f"rw,noexec,nosuid,nodev,size=8m,mode=0700,{owner}",
        },
        "volumes": {},
        "mounts": [],
        "network_mode": pool.network,
        "ipc_mode": "private",
        "pids_limit": pool.pids,
        "mem_limit": pool.memory,
        "memswap_limit": pool.memory,
        "nano_cpus": round(pool.cpus * 1e9),
        "ulimits": [],
        # Job output must only ever be stored redacted: Docker's own log driver would write it raw to disk.
        "log_config": {"type": "none", "config": {}},
        "stop_signal": "SIGTERM",
    }
    if pool.runtime is not None:
        # e.g. runsc (gVisor): the same options, run on a user-space kernel. It applies the tmpfs options above
        # except nosuid and nodev, which it ignores; tests/integration/test_runsc.py shows what covers for them.
        kwargs["runtime"] = pool.runtime
    _apply_unsafe(kwargs, pool)
    return ContainerSpec(name=container_name(controller_id, spec.id, attempt), create_kwargs=kwargs)


def _apply_unsafe(kwargs: dict[str, object], pool: PoolConfig) -> None:
    """Only explicit, audited opt-ins from the pool config ever get past the hardened defaults."""
    unsafe = pool.unsafe
    if unsafe.privileged:
        kwargs["privileged"] = True
    if unsafe.host_network:
        kwargs["network_mode"] = "host"
    if unsafe.host_pid:
        kwargs["pid_mode"] = "host"
    if unsafe.host_ipc:
        kwargs["ipc_mode"] = "host"
    if unsafe.add_capabilities:
        kwargs["cap_add"] = list(unsafe.add_capabilities)
    if unsafe.host_mounts:
        kwargs["binds"] = [m if m.count(":") == 2 else m + ":ro" for m in unsafe.host_mounts]


def _sh(value: str) -> str:
    return shlex.quote(value)


def job_script(commands: Sequence[str], secrets: Sequence[SecretFile] = ()) -> bytes:
    """The script the bootstrap runs: secrets into the tmpfs / exported, then each command, stopping at the first
    failure with its exit code. Commands share one shell so `cd` and variables carry over, as in GitLab CI."""
    # One stream keeps the true order of stdout and stderr lines: Docker copies the two pipes independently.
    lines = [f"rm -f {JOB_DIR}/script.sh", "exec 2>&1", "umask 077"]
    for secret in secrets:
        if secret.deliver == "env":
            lines.append(f"export {secret.name}={_sh(secret.value)}")
        else:
            lines.append(f"printf '%s' {_sh(secret.value)} > {SECRETS_DIR}/{secret.name}")
    lines += ["umask 022", f"cd {WORKSPACE} || exit 1"]
    for cmd in commands:
        lines.append(f"printf '%s\\n' {_sh('$ ' + cmd)}")
        lines.append(f"eval {_sh(cmd)} || exit $?")
    return ("\n".join(lines) + "\n").encode()


def stdin_payload(script: bytes) -> bytes:
    return str(len(script)).encode() + b"\n" + script


def managed_filters(controller_id: str) -> Mapping[str, list[str]]:
    return {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_CONTROLLER}={controller_id}"]}

"""Pool + job → Docker create arguments, with the hardening built in. Pure, so every default is unit-tested.

The job's commands (and, later, its secrets) never appear in the create arguments: they travel over the
container's stdin as a script that a fixed bootstrap writes to a private tmpfs, so `docker inspect` shows only
what is safe to show.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

from orchestrator.config import PoolConfig
from orchestrator.credentials.base import SecretFile
from orchestrator.jobs.spec import JobSpec

LABEL_PREFIX = "io.runner-orchestrator."
LABEL_MANAGED = LABEL_PREFIX + "managed"
LABEL_CONTROLLER = LABEL_PREFIX + "controller-id"
LABEL_JOB = LABEL_PREFIX + "job-id"
LABEL_POOL = LABEL_PREFIX + "pool"
LABEL_ATTEMPT = LABEL_PREFIX + "attempt"
LABEL_WARM = LABEL_PREFIX + "warm"

WORKSPACE = "/workspace"
JOB_DIR = "/run/job"
SECRETS_DIR = "/run/secrets"

# PID 1 (after docker-init) reads a length-prefixed script from stdin into the private tmpfs, then runs it.
# It holds no job data, so it is identical for every job and safe to show in `docker inspect`. `dd` with
# iflag=fullblock reads exactly the script's bytes (busybox `head -c` reads ahead), so the stdin that follows --
# the workspace archive, if any -- is left for the script, which unpacks it and then closes stdin for the commands.
BOOTSTRAP = (
    f"set -eu; umask 077; chmod 700 {JOB_DIR} {SECRETS_DIR} {WORKSPACE}; IFS= read -r n; "
    f'dd bs="$n" count=1 iflag=fullblock of={JOB_DIR}/script.sh 2>/dev/null; '
    f"exec /bin/sh {JOB_DIR}/script.sh"
)
# Sections the script writes to the side channel (the container's stderr; commands never see that descriptor):
# a line `ORCH1 <nonce> <kind>` followed by a tar stream. runtime/side_channel.py splits them.
SIDE_MAGIC = "ORCH1"


class CreateArgs(TypedDict):
    """What the Engine API's container create takes besides its name and host config (as `docker`'s
    `APIClient.create_container` names them): the image, the fixed bootstrap, identity, labels, stdin."""

    image: str
    entrypoint: list[str]
    command: list[str]
    user: str
    working_dir: str
    environment: dict[str, str]
    labels: dict[str, str]
    hostname: str
    stdin_open: bool
    tty: bool
    stop_signal: str


class HostConfig(TypedDict, total=False):
    """The container's isolation and limits (`APIClient.create_host_config` arguments). The keys only the
    unsafe opt-ins set (`pid_mode`, `binds`) and `runtime` are absent unless a pool asks for them."""

    init: bool
    privileged: bool
    cap_drop: list[str]
    cap_add: list[str]
    security_opt: list[str]
    read_only: bool
    tmpfs: dict[str, str]
    network_mode: str
    ipc_mode: str
    pid_mode: str
    pids_limit: int
    mem_limit: int
    memswap_limit: int
    nano_cpus: int
    ulimits: list[object]
    log_config: dict[str, object]
    binds: list[str]
    runtime: str


@dataclass(frozen=True)
class ContainerSpec:
    """Everything the engine is told to create one job's container, split the way the Engine API splits it, so
    an adapter passes each part as it is."""

    name: str
    create: CreateArgs
    host: HostConfig


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


def job_env(spec: JobSpec) -> dict[str, str]:
    """The job's environment. It reaches the container in the script (exported before the commands), not in the
    create arguments: a container made before its job (a warm one) holds nothing of the job."""
    return {
        "CI_JOB_ID": spec.id,
        "CI_REPOSITORY": spec.repository,
        "CI_REF": spec.ref,
        "CI_SHA": spec.sha,
        **spec.env,
    }


def build_container_spec(
    spec: JobSpec,
    pool: PoolConfig,
    *,
    controller_id: str,
    attempt: int = 1,
    init: bool = True,
) -> ContainerSpec:
    labels = labels_for(spec.pool, pool, controller_id, spec.id, attempt)
    return _container_spec(container_name(controller_id, spec.id, attempt), spec.pool, pool, labels, init=init)


def build_warm_spec(
    pool_name: str, pool: PoolConfig, *, controller_id: str, tag: str, init: bool = True
) -> ContainerSpec:
    """A pool's container made before any job claims it: the same hardening and bootstrap, labels that say warm
    instead of naming a job, a name of its own (`tag`: random). Its job arrives over stdin at claim time."""
    labels = {k: v for k, v in pool.labels.items() if not k.startswith(LABEL_PREFIX)}
    labels.update({LABEL_MANAGED: "true", LABEL_CONTROLLER: controller_id, LABEL_POOL: pool_name, LABEL_WARM: "true"})
    return _container_spec(f"orch-{controller_id}-warm-{pool_name}-{tag}", pool_name, pool, labels, init=init)


def _container_spec(
    name: str, pool_name: str, pool: PoolConfig, labels: dict[str, str], *, init: bool
) -> ContainerSpec:
    uid, _, gid = pool.user.partition(":")
    gid = gid or uid
    owner = f"uid={uid},gid={gid}"
    env = {"HOME": WORKSPACE, "CI": "true", "CI_POOL": pool_name}
    create = CreateArgs(
        image=pool.image,
        entrypoint=["/bin/sh", "-c", BOOTSTRAP],
        command=[],
        user=f"{uid}:{gid}",
        working_dir=WORKSPACE,
        environment=env,
        labels=labels,
        hostname="job",
        stdin_open=True,
        tty=False,
        stop_signal="SIGTERM",
    )
    host = HostConfig(
        init=init,
        privileged=False,
        cap_drop=["ALL"],
        cap_add=[],
        security_opt=["no-new-privileges:true"],
        read_only=True,
        tmpfs={
            "/tmp": f"rw,noexec,nosuid,nodev,size={pool.tmp_size},mode=1777",  # noqa: S108 - a path inside the container
            WORKSPACE: f"rw,exec,nosuid,nodev,size={pool.workspace_size},mode=0700,{owner}",
            JOB_DIR: f"rw,noexec,nosuid,nodev,size=8m,mode=0700,{owner}",
            SECRETS_DIR: f"rw,noexec,nosuid,nodev,size=8m,mode=0700,{owner}",
        },
        network_mode=pool.network,
        ipc_mode="private",
        pids_limit=pool.pids,
        mem_limit=pool.memory,
        memswap_limit=pool.memory,
        nano_cpus=round(pool.cpus * 1e9),
        ulimits=[],
        # Job output must only ever be stored redacted: Docker's own log driver would write it raw to disk.
        log_config={"type": "none", "config": {}},
    )
    if pool.runtime is not None:
        # e.g. runsc (gVisor): the same options, run on a user-space kernel. It applies the tmpfs options above
        # except nosuid and nodev, which it ignores; tests/integration/test_runsc.py shows what covers for them.
        host["runtime"] = pool.runtime
    _apply_unsafe(host, pool)
    return ContainerSpec(name=name, create=create, host=host)


def _apply_unsafe(host: HostConfig, pool: PoolConfig) -> None:
    """Only explicit, audited opt-ins from the pool config ever get past the hardened defaults."""
    unsafe = pool.unsafe
    if unsafe.privileged:
        host["privileged"] = True
    if unsafe.host_network:
        host["network_mode"] = "host"
    if unsafe.host_pid:
        host["pid_mode"] = "host"
    if unsafe.host_ipc:
        host["ipc_mode"] = "host"
    if unsafe.add_capabilities:
        host["cap_add"] = list(unsafe.add_capabilities)
    if unsafe.host_mounts:
        host["binds"] = [m if m.count(":") == 2 else m + ":ro" for m in unsafe.host_mounts]


def _sh(value: str) -> str:
    return shlex.quote(value)


@dataclass(frozen=True)
class WorkspaceIO:
    """What crosses the workspace besides the commands: an archive unpacked into /workspace before them (the
    checkout and a restored cache; `inbound_bytes` of tar after the script on stdin), and archives of workspace
    paths written to the side channel after them (artifacts; the cache to save). `nonce` marks the sections."""

    inbound_bytes: int = 0
    nonce: str = ""
    artifacts: tuple[str, ...] = ()
    artifacts_always: bool = False
    cache: tuple[str, ...] = ()


def _emit(kind: str, patterns: Sequence[str], nonce: str) -> list[str]:
    """Shell lines that write `patterns` (globs, expanded by the job's shell) as one tar section to fd 9. A path
    whose real location is outside /workspace (through a symbolic link) is left out and said so in the log."""
    globs = " ".join(patterns)  # validated at admission: no whitespace, quotes or shell syntax (jobs/spec.py)
    return [
        "set --",
        f"for p in {globs}; do",
        '  if [ -e "$p" ] || [ -L "$p" ]; then',
        '    case "$(realpath "$p" 2>/dev/null)" in',
        f'      {WORKSPACE}|{WORKSPACE}/*) set -- "$@" "$p" ;;',
        f"      *) printf '[orchestrator] {kind}: %s leaves {WORKSPACE}; left out\\n' \"$p\" ;;",
        "    esac",
        f"  else printf '[orchestrator] {kind}: nothing matches %s\\n' \"$p\"; fi",
        "done",
        f"printf '{SIDE_MAGIC} %s %s\\n' {_sh(nonce)} {kind} >&9",
        'if [ $# -gt 0 ]; then tar -c -f - "$@" >&9; fi',
    ]


def job_script(
    commands: Sequence[str],
    secrets: Sequence[SecretFile] = (),
    io: WorkspaceIO | None = None,
    env: Mapping[str, str] | None = None,
) -> bytes:
    """The script the bootstrap runs: secrets into the tmpfs / exported, the workspace archive unpacked, then each
    command, stopping at the first failure with its exit code, then the archives the job hands back. Commands share
    one shell so `cd` and variables carry over, as in GitLab CI; they run with stdin /dev/null and without fd 9."""
    io = io or WorkspaceIO()
    # One stream keeps the true order of stdout and stderr lines: Docker copies the two pipes independently. The
    # real stderr stays open as fd 9 for the side channel only.
    lines = [f"rm -f {JOB_DIR}/script.sh", "exec 9>&2 2>&1", "umask 077"]
    for name, value in (env or {}).items():  # names validated at admission (jobs/spec.py)
        lines.append(f"export {name}={_sh(value)}")
    for secret in secrets:
        if secret.deliver == "env":
            lines.append(f"export {secret.name}={_sh(secret.value)}")
        else:
            lines.append(f"printf '%s' {_sh(secret.value)} > {SECRETS_DIR}/{secret.name}")
    lines += ["umask 022", f"cd {WORKSPACE} || exit 1"]
    if io.inbound_bytes:
        lines.append(
            f"head -c {int(io.inbound_bytes)} | tar -x -f - || "
            "{ echo '[orchestrator] the workspace could not be unpacked (does the image have tar?)'; exit 1; }"
        )
    lines.append("exec </dev/null")
    body = []
    for cmd in commands:
        body.append(f"printf '%s\\n' {_sh('$ ' + cmd)}")
        body.append(f"eval {_sh(cmd)} || exit $?")
    if not (io.artifacts or io.cache):
        lines += ["exec 9>&-", *body]
        return ("\n".join(lines) + "\n").encode()
    lines += ["(", "exec 9>&-", *body, ")", "rc=$?", f"cd {WORKSPACE} || exit $rc"]
    if io.artifacts:
        lines.append("if [ $rc -eq 0 ]; then" if not io.artifacts_always else "if true; then")
        lines += ["  " + line for line in _emit("artifacts", io.artifacts, io.nonce)]
        lines.append("fi")
    if io.cache:
        lines.append("if [ $rc -eq 0 ]; then")
        lines += ["  " + line for line in _emit("cache", io.cache, io.nonce)]
        lines.append("fi")
    lines.append("exit $rc")
    return ("\n".join(lines) + "\n").encode()


def stdin_payload(script: bytes) -> bytes:
    return str(len(script)).encode() + b"\n" + script


def managed_filters(controller_id: str) -> Mapping[str, list[str]]:
    return {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_CONTROLLER}={controller_id}"]}

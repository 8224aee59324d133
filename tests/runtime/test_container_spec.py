"""Tests for the Docker create arguments and the job script (orchestrator/runtime/container_spec.py).

The script tests execute the generated shell with the real /bin/sh, with the in-container paths rewritten to
directories under tmp_path, so quoting and exit-code handling are proven, not just eyeballed.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import PoolConfig
from orchestrator.jobs.spec import JobSpec
from orchestrator.runtime.container_spec import (
    BOOTSTRAP,
    JOB_DIR,
    LABEL_ATTEMPT,
    LABEL_CONTROLLER,
    LABEL_JOB,
    LABEL_MANAGED,
    LABEL_POOL,
    LABEL_PREFIX,
    LABEL_WARM,
    SECRETS_DIR,
    WORKSPACE,
    CreateArgs,
    HostConfig,
    SecretFile,
    WorkspaceIO,
    build_container_spec,
    build_warm_spec,
    container_name,
    job_env,
    job_script,
    labels_for,
    managed_filters,
    stdin_payload,
)

from tarballs import tar_bytes

SH = "/bin/sh"
CMD_MARKER = "cmd-marker-7f3a9c"
SECRET_MARKER = "secret-value-b81e44"


def spec(**overrides: Any) -> JobSpec:
    data: dict[str, Any] = {
        "id": "job-42",
        "pool": "default",
        "repository": "example/app",
        "ref": "refs/heads/main",
        "sha": "3f786850e387550fdab836ed7e6dc881de23001b",
        "commands": [f"echo {CMD_MARKER}", f"make test-{CMD_MARKER}"],
    }
    data.update(overrides)
    return JobSpec.model_validate(data)


def pool(**overrides: Any) -> PoolConfig:
    data: dict[str, Any] = {"image": "runner:test", "memory": "256m", "cpus": 1.5, "pids": 128, "user": "10001:10002"}
    data.update(overrides)
    return PoolConfig.model_validate(data)


def kwargs(job: JobSpec | None = None, p: PoolConfig | None = None, **kw: Any) -> dict[str, Any]:
    """Every option the engine is given, create arguments and host config together."""
    cs = build_container_spec(job or spec(), p or pool(), controller_id=kw.pop("controller_id", "ctl-1"), **kw)
    return {**cs.create, **cs.host}


def test_options_are_split_the_way_the_engine_api_takes_them() -> None:
    cs = build_container_spec(spec(), pool(unsafe={"host_mounts": ["/srv/x:/x"], "host_pid": True}), controller_id="c")
    assert set(cs.create) == set(CreateArgs.__annotations__)
    assert set(cs.host) <= set(HostConfig.__annotations__)
    assert not set(cs.create) & set(cs.host)
    assert {"binds", "pid_mode"} <= set(cs.host)


# --- hardening defaults ---------------------------------------------------------------------------


def test_identity_and_entrypoint() -> None:
    cs = build_container_spec(spec(), pool(), controller_id="ctl-1")
    kw = kwargs()
    assert cs.name == "orch-ctl-1-job-42-a1"
    assert kw["image"] == "runner:test"
    assert kw["entrypoint"] == ["/bin/sh", "-c", BOOTSTRAP]
    assert kw["command"] == []
    assert kw["working_dir"] == WORKSPACE == "/workspace"
    assert kw["hostname"] == "job"
    assert kw["stdin_open"] is True
    assert kw["tty"] is False
    assert kw["init"] is True
    assert kw["stop_signal"] == "SIGTERM"


def test_init_can_be_disabled() -> None:
    assert kwargs(init=False)["init"] is False


def test_privileges_dropped() -> None:
    kw = kwargs()
    assert kw["user"] == "10001:10002"
    assert kw["privileged"] is False
    assert kw["cap_drop"] == ["ALL"]
    assert kw["cap_add"] == []
    assert kw["security_opt"] == ["no-new-privileges:true"]
    assert kw["read_only"] is True
    assert kw["ipc_mode"] == "private"
    assert kw["ulimits"] == []


def test_no_host_mounts_and_no_forbidden_options() -> None:
    kw = kwargs()
    for dangerous in (
        *("devices", "device_requests", "pid_mode", "userns_mode", "cgroupns", "volumes_from", "binds"),
        *("volumes", "mounts"),
    ):
        assert dangerous not in kw, dangerous
    assert "network_mode" in kw
    assert "network" not in kw


def test_user_without_gid_uses_uid_as_gid() -> None:
    kw = kwargs(p=pool(user="4242"))
    assert kw["user"] == "4242:4242"
    for path in (WORKSPACE, JOB_DIR, SECRETS_DIR):
        assert kw["tmpfs"][path].endswith(",uid=4242,gid=4242")


def test_tmpfs_mounts() -> None:
    tmpfs = kwargs(p=pool(workspace_size="2g", tmp_size="64m"))["tmpfs"]
    assert set(tmpfs) == {"/tmp", "/workspace", "/run/job", "/run/secrets"}
    assert JOB_DIR == "/run/job"
    assert SECRETS_DIR == "/run/secrets"
    assert tmpfs["/tmp"] == "rw,noexec,nosuid,nodev,size=64m,mode=1777"
    assert tmpfs["/workspace"] == "rw,exec,nosuid,nodev,size=2g,mode=0700,uid=10001,gid=10002"
    assert tmpfs["/run/job"] == "rw,noexec,nosuid,nodev,size=8m,mode=0700,uid=10001,gid=10002"
    assert tmpfs["/run/secrets"] == "rw,noexec,nosuid,nodev,size=8m,mode=0700,uid=10001,gid=10002"


def test_tmpfs_option_sets() -> None:
    tmpfs = kwargs()["tmpfs"]
    opts = {path: set(value.split(",")) for path, value in tmpfs.items()}
    for path in opts:
        assert {"nosuid", "nodev"} <= opts[path], path
    for path in ("/tmp", "/run/job", "/run/secrets"):
        assert "noexec" in opts[path], path
    # Build tools must be able to run what they compile in the workspace.
    assert "exec" in opts["/workspace"]
    assert "noexec" not in opts["/workspace"]
    assert "mode=0700" in opts["/run/secrets"]


def test_network_none_by_default() -> None:
    assert kwargs(p=PoolConfig(image="x"))["network_mode"] == "none"


def test_pool_network_passed_through() -> None:
    assert kwargs(p=pool(network="ci-egress"))["network_mode"] == "ci-egress"


def test_engine_default_runtime_unless_the_pool_names_one() -> None:
    assert PoolConfig(image="x").runtime is None
    assert "runtime" not in kwargs()  # Docker then uses its default runtime (runc)
    sandboxed = kwargs(p=pool(runtime="runsc"))
    assert sandboxed["runtime"] == "runsc"
    # The runtime changes who serves the syscalls, nothing else: every hardening option stays as it is.
    assert {k: v for k, v in sandboxed.items() if k != "runtime"} == kwargs()


def test_runtime_goes_into_the_host_config() -> None:
    import docker.types

    cs = build_container_spec(spec(), pool(runtime="runsc"), controller_id="c")
    assert docker.types.HostConfig(version="1.41", **cs.host)["Runtime"] == "runsc"
    assert "runtime" not in cs.create  # not a create_container argument


def test_the_docker_sdk_takes_every_option_as_given() -> None:
    """What DockerEngine.create passes on unchanged: the SDK must accept each key where it is put."""
    import docker.types

    cs = build_container_spec(
        spec(), pool(runtime="runsc", unsafe={"host_mounts": ["/srv/x:/x"], "host_pid": True}), controller_id="c"
    )
    host = docker.types.HostConfig(version="1.41", **cs.host)
    assert host["Binds"] == ["/srv/x:/x:ro"] and host["PidMode"] == "host" and host["ReadonlyRootfs"] is True
    config = docker.types.ContainerConfig(version="1.41", **cs.create)
    assert config["Image"] == "runner:test" and config["OpenStdin"] is True


@pytest.mark.parametrize("name", ["runsc", "runsc-kvm", "io.containerd.runc.v2", "nvidia", "kata_1"])
def test_runtime_names_accepted(name: str) -> None:
    assert pool(runtime=name).runtime == name


@pytest.mark.parametrize("name", ["", "-runsc", "run sc", "runsc;rm", "/usr/bin/runsc", "a" * 65, "runsc\n"])
def test_runtime_names_refused(name: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="runtime"):
        pool(runtime=name)


def test_resource_limits() -> None:
    kw = kwargs(p=pool(memory="256m", cpus=1.5, pids=128))
    assert kw["pids_limit"] == 128
    assert kw["mem_limit"] == 256 * 1024**2
    assert kw["memswap_limit"] == 256 * 1024**2, "memswap == mem: no swap on top of the memory limit"
    assert kw["nano_cpus"] == 1_500_000_000
    assert isinstance(kw["nano_cpus"], int)


@pytest.mark.parametrize(("cpus", "nano"), [(1.0, 1_000_000_000), (0.5, 500_000_000), (2.0, 2_000_000_000)])
def test_nano_cpus(cpus: float, nano: int) -> None:
    assert kwargs(p=pool(cpus=cpus))["nano_cpus"] == nano


@pytest.mark.parametrize(("cpus", "nano"), [(4.1, 4_100_000_000), (2.01, 2_010_000_000)])
def test_nano_cpus_exact_for_decimal_cpus(cpus: float, nano: int) -> None:
    assert kwargs(p=pool(cpus=cpus))["nano_cpus"] == nano


def test_docker_log_driver_disabled() -> None:
    assert kwargs()["log_config"] == {"type": "none", "config": {}}


def test_environment() -> None:
    """The create arguments carry only what every container of the pool shares; the job's own environment goes
    in the script, so a container made before its job (warm) holds nothing of it."""
    job = spec(env={"FOO": "bar", "EMPTY": ""})
    assert kwargs(job=job)["environment"] == {"HOME": "/workspace", "CI": "true", "CI_POOL": "default"}
    assert job_env(job) == {
        "CI_JOB_ID": "job-42",
        "CI_REPOSITORY": "example/app",
        "CI_REF": "refs/heads/main",
        "CI_SHA": "3f786850e387550fdab836ed7e6dc881de23001b",
        "FOO": "bar",
        "EMPTY": "",
    }
    lines = job_script(["true"], env={"FOO": "it's", "EMPTY": ""}).decode().splitlines()
    assert "export FOO='it'\"'\"'s'" in lines and "export EMPTY=''" in lines


def test_a_warm_container_holds_nothing_of_a_job() -> None:
    warm = build_warm_spec("default", pool(), controller_id="ctl", tag="abcd1234")
    job = build_container_spec(spec(), pool(), controller_id="ctl")
    assert warm.host == job.host and warm.create["entrypoint"] == job.create["entrypoint"]
    assert warm.name == "orch-ctl-warm-default-abcd1234"
    assert warm.create["labels"][LABEL_WARM] == "true" and LABEL_JOB not in warm.create["labels"]
    assert "job-42" not in json.dumps(warm.create) and "example/app" not in json.dumps(warm.create)


# --- labels and names -----------------------------------------------------------------------------


def test_labels() -> None:
    labels = kwargs(p=pool(labels={"team": "platform"}), controller_id="ctl-9", attempt=3)["labels"]
    assert labels == {
        "team": "platform",
        "io.runner-orchestrator.managed": "true",
        "io.runner-orchestrator.controller-id": "ctl-9",
        "io.runner-orchestrator.job-id": "job-42",
        "io.runner-orchestrator.pool": "default",
        "io.runner-orchestrator.attempt": "3",
    }
    assert {LABEL_MANAGED, LABEL_CONTROLLER, LABEL_JOB, LABEL_POOL, LABEL_ATTEMPT} <= set(labels)


def test_pool_labels_cannot_override_or_add_reserved_labels() -> None:
    hostile = {
        LABEL_MANAGED: "false",
        LABEL_CONTROLLER: "someone-else",
        LABEL_JOB: "other-job",
        LABEL_POOL: "other-pool",
        LABEL_ATTEMPT: "99",
        LABEL_PREFIX + "extra": "x",
        "ok": "1",
    }
    labels = labels_for("default", pool(labels=hostile), "ctl-1", "job-42", 2)
    assert labels == {
        "ok": "1",
        LABEL_MANAGED: "true",
        LABEL_CONTROLLER: "ctl-1",
        LABEL_JOB: "job-42",
        LABEL_POOL: "default",
        LABEL_ATTEMPT: "2",
    }
    assert kwargs(p=pool(labels=hostile), attempt=2)["labels"] == labels


def test_container_name_per_attempt() -> None:
    assert container_name("ctl", "-job", 1) == "orch-ctl--job-a1"
    assert build_container_spec(spec(id=".x"), pool(), controller_id="c", attempt=7).name == "orch-c-.x-a7"
    names = {build_container_spec(spec(), pool(), controller_id="c", attempt=a).name for a in (1, 2, 3)}
    assert len(names) == 3


def test_managed_filters() -> None:
    assert dict(managed_filters("ctl-1")) == {
        "label": ["io.runner-orchestrator.managed=true", "io.runner-orchestrator.controller-id=ctl-1"]
    }


# --- nothing secret in the create arguments -------------------------------------------------------


def test_commands_and_secrets_never_in_the_create_arguments() -> None:
    job = spec(
        commands=[f"echo {CMD_MARKER}", f"curl -H 'X: {CMD_MARKER}2' https://x"],
        secrets=[
            {"path": "ci/app", "key": "token", "name": "APP_TOKEN"},
            {"path": "ci/db", "key": "password", "name": "DB_PASS", "deliver": "env"},
        ],
    )
    dumped = json.dumps(kwargs(job=job), sort_keys=True)
    assert CMD_MARKER not in dumped
    assert "curl" not in dumped
    assert SECRET_MARKER not in dumped
    # The requests do not belong in `docker inspect` either.
    assert "APP_TOKEN" not in dumped
    assert "DB_PASS" not in dumped
    assert "ci/db" not in dumped


def test_bootstrap_holds_no_job_data() -> None:
    assert BOOTSTRAP == (
        "set -eu; umask 077; chmod 700 /run/job /run/secrets /workspace; IFS= read -r n; "
        'dd bs="$n" count=1 iflag=fullblock of=/run/job/script.sh 2>/dev/null; exec /bin/sh /run/job/script.sh'
    )
    a = kwargs(job=spec(id="a", commands=["one"]))["entrypoint"]
    b = kwargs(job=spec(id="b", commands=["two"]))["entrypoint"]
    assert a == b


def test_secret_file_repr_hides_value() -> None:
    secret = SecretFile("TOKEN", SECRET_MARKER)
    assert SECRET_MARKER not in repr(secret)
    assert SECRET_MARKER not in str(secret)
    assert secret.deliver == "file"


# --- stdin framing ----------------------------------------------------------------------------------


def test_stdin_payload_framing_counts_bytes() -> None:
    script = "echo ü€😀\n".encode()
    assert len(script) != len(script.decode())
    assert stdin_payload(script) == str(len(script)).encode() + b"\n" + script
    assert stdin_payload(script).startswith(b"15\n")
    assert stdin_payload(b"") == b"0\n"


def test_job_script_is_bytes_ending_in_newline() -> None:
    script = job_script(["true"])
    assert isinstance(script, bytes)
    assert script.endswith(b"\n")


def test_script_text_order() -> None:
    text = job_script(["echo a"], [SecretFile("F", "v"), SecretFile("E", "w", "env")]).decode()
    lines = text.splitlines()
    assert lines[0] == "rm -f /run/job/script.sh"
    assert lines.index("umask 077") < lines.index("printf '%s' v > /run/secrets/F")
    assert lines.index("export E=w") < lines.index("umask 022")
    assert lines.index("umask 022") < lines.index("cd /workspace || exit 1")
    assert lines.index("cd /workspace || exit 1") < lines.index("exec </dev/null") < lines.index("exec 9>&-")
    assert lines[-2:] == ["printf '%s\\n' '$ echo a'", "eval 'echo a' || exit $?"]


# --- executing the script with the real shell ----------------------------------------------------


class Sandbox:
    def __init__(self, root: Path) -> None:
        self.workspace = root / "ws"
        self.secrets = root / "s"
        self.job = root / "j"
        for d in (self.workspace, self.secrets, self.job):
            d.mkdir()

    def localize(self, text: str) -> str:
        return (
            text.replace(WORKSPACE, str(self.workspace))
            .replace(SECRETS_DIR, str(self.secrets))
            .replace(JOB_DIR, str(self.job))
        )

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", **extra}

    def run(self, commands: list[str], secrets: list[SecretFile] | None = None) -> subprocess.CompletedProcess[bytes]:
        script = self.localize(job_script(commands, secrets or []).decode())
        return subprocess.run(
            [SH, "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env(),
            timeout=30,
            check=False,
        )

    def run_bootstrap(self, payload: bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [SH, "-c", self.localize(BOOTSTRAP)],
            input=payload,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env(),
            timeout=30,
            check=False,
        )


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    if not (os.path.exists(SH) and shutil.which("head")):
        pytest.skip("needs /bin/sh and head")
    return Sandbox(tmp_path)


def test_commands_run_in_order_with_echo_lines(box: Sandbox) -> None:
    res = box.run(["echo one", "echo two", "printf '%s\\n' three"])
    assert res.returncode == 0
    assert res.stdout == b"$ echo one\none\n$ echo two\ntwo\n$ printf '%s\\n' three\nthree\n"


def test_commands_share_one_shell(box: Sandbox) -> None:
    res = box.run(
        [
            "mkdir -p sub/dir",
            "cd sub/dir",
            "FOO=bar",
            "pwd > ../../where",
            'echo "$FOO" > ../../foo',
            "export EXPORTED=1",
            "sh -c 'echo \"child sees $EXPORTED\"'",
        ]
    )
    assert res.returncode == 0, res.stdout
    assert (box.workspace / "where").read_text().strip() == str(box.workspace / "sub" / "dir")
    assert (box.workspace / "foo").read_text() == "bar\n"
    assert res.stdout.endswith(b"child sees 1\n")


def test_commands_start_in_the_workspace(box: Sandbox) -> None:
    res = box.run(["pwd"])
    assert res.stdout.splitlines()[-1].decode() == str(box.workspace)


@pytest.mark.parametrize(
    ("failing", "code"),
    [("false", 1), ("(exit 7)", 7), ("sh -c 'exit 42'", 42), ("exit 3", 3), ("definitely-not-a-command-xyz", 127)],
)
def test_stops_at_first_failure_with_its_exit_code(box: Sandbox, failing: str, code: int) -> None:
    res = box.run(["echo before", failing, "echo after", "touch after-ran"])
    assert res.returncode == code
    out = res.stdout.decode()
    assert out.startswith(f"$ echo before\nbefore\n$ {failing}\n")
    assert "after" not in out
    assert not (box.workspace / "after-ran").exists()


def test_failure_in_the_middle_of_a_pipeline_uses_last_status(box: Sandbox) -> None:
    res = box.run(["false | true", "echo reached"])
    assert res.returncode == 0
    assert res.stdout.endswith(b"reached\n")


def test_all_success_exits_zero(box: Sandbox) -> None:
    assert box.run(["true", "true"]).returncode == 0


def test_stderr_of_commands_is_in_the_output_stream_in_order(box: Sandbox) -> None:
    script = box.localize(job_script(["echo out1", "echo err1 >&2", "echo out2"]).decode())
    res = subprocess.run(
        [SH, "-c", script], stdin=subprocess.DEVNULL, capture_output=True, env=box.env(), timeout=30, check=False
    )
    assert res.stdout == b"$ echo out1\nout1\n$ echo err1 >&2\nerr1\n$ echo out2\nout2\n"
    assert res.stderr == b""


HOSTILE = [
    "echo 'single quoted'",
    'echo "double $((1+2))"',
    "echo $(echo sub-shell)",
    "echo `echo back-ticks`",
    "echo it\\'s",
    "printf '%s\\n' first\nprintf '%s\\n' second",
    "echo \"'\" '\"' \\\\",
    "echo ünïcödé 😀",
    "x='a b'; echo \"[$x]\"",
]


def test_hostile_commands_run_as_written(box: Sandbox) -> None:
    res = box.run(HOSTILE)
    assert res.returncode == 0, res.stdout
    expected = b""
    outputs = [
        "single quoted",
        "double 3",
        "sub-shell",
        "back-ticks",
        "it's",
        "first\nsecond",
        "' \" \\",
        "ünïcödé 😀",
        "[a b]",
    ]
    for cmd, output in zip(HOSTILE, outputs, strict=True):
        expected += f"$ {cmd}\n{output}\n".encode()
    assert res.stdout == expected


def test_echo_line_never_executes_the_command_text(box: Sandbox) -> None:
    # Everything after '#' is a comment when the command runs; if the echo line's quoting were broken, the
    # touches would run while printing.
    cmd = 'true # \' ; touch pwned1 ; $(touch pwned2) `touch pwned3` "; touch pwned4; "'
    res = box.run([cmd])
    assert res.returncode == 0
    assert res.stdout == f"$ {cmd}\n".encode()
    assert sorted(p.name for p in box.workspace.iterdir()) == []


def test_command_cannot_break_out_of_eval_quoting(box: Sandbox) -> None:
    # A command that is itself an unterminated quote is a syntax error for that command only, not a way to
    # splice shell into the script around it.
    res = box.run(["echo 'unterminated", "touch never"])
    assert res.returncode != 0
    assert not (box.workspace / "never").exists()


SECRET_VALUES = {
    "PLAIN": "s3cr3t",
    "QUOTES": "it's \"quoted\" 'twice'",
    "NEWLINES": "line1\nline2\n\n",
    "SHELLY": "$(touch pwned) `touch pwned` $HOME ${X:-y} \\ ; | & > <",
    "UNICODE": "pässwörd-€-😀",
    "LEADING_DASH": "-n -e %s %d",
    "EMPTY": "",
}


def test_file_secrets_written_private_and_exact(box: Sandbox) -> None:
    secrets = [SecretFile(name, value) for name, value in SECRET_VALUES.items()]
    res = box.run(["touch made-by-job"], secrets)
    assert res.returncode == 0, res.stdout
    for name, value in SECRET_VALUES.items():
        path = box.secrets / name
        assert path.read_bytes() == value.encode(), name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    assert not (box.workspace / "pwned").exists()
    assert not (box.secrets / "pwned").exists()
    # umask is relaxed again for the job's own files.
    assert stat.S_IMODE((box.workspace / "made-by-job").stat().st_mode) == 0o644
    # Values are never echoed into the job output.
    for value in SECRET_VALUES.values():
        if value:
            assert value.encode() not in res.stdout


def test_env_secrets_exported_exact(box: Sandbox) -> None:
    secrets = [SecretFile(name, value, deliver="env") for name, value in SECRET_VALUES.items()]
    commands = [f'printf "%s" "${name}" > out_{name}' for name in SECRET_VALUES]
    # A child process sees them too: they are exported, not just shell variables.
    commands += [f'sh -c \'printf "%s" "${name}"\' > child_{name}' for name in SECRET_VALUES]
    res = box.run(commands, secrets)
    assert res.returncode == 0, res.stdout
    for name, value in SECRET_VALUES.items():
        assert (box.workspace / f"out_{name}").read_bytes() == value.encode(), name
        assert (box.workspace / f"child_{name}").read_bytes() == value.encode(), name
    assert list(box.secrets.iterdir()) == [], "env secrets are not written to files"
    assert not (box.workspace / "pwned").exists()


def test_bootstrap_end_to_end_with_framing(box: Sandbox) -> None:
    secrets = [SecretFile("TOKEN", "tök'en\n"), SecretFile("VAR", "välue", "env")]
    wide = "echo ünï " + "😀" * 10  # 30+ bytes more than characters, twice (echo line and eval line)
    commands = [wide, 'printf "%s" "$VAR" > var', "cat > stdin-seen", "ls ../j > job-dir"]
    script = box.localize(job_script(commands, secrets).decode()).encode()
    # Bytes after the frame must never reach the job: the frame length is in bytes, not characters.
    res = box.run_bootstrap(stdin_payload(script) + b"echo INJECTED > injected\n")
    assert res.returncode == 0, res.stdout
    assert res.stdout == f"$ {wide}\n{wide[5:]}\n".encode() + b"".join(f"$ {c}\n".encode() for c in commands[1:])
    assert (box.secrets / "TOKEN").read_bytes() == "tök'en\n".encode()
    assert (box.workspace / "var").read_bytes() == "välue".encode()
    assert (box.workspace / "stdin-seen").read_bytes() == b"", "the job's stdin is /dev/null"
    assert not (box.workspace / "injected").exists()
    assert (box.workspace / "job-dir").read_text() == "", "the script deletes itself before running commands"
    for d in (box.workspace, box.secrets, box.job):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_bootstrap_exit_code_propagates(box: Sandbox) -> None:
    script = box.localize(job_script(["echo x", "(exit 9)", "echo y"]).decode()).encode()
    res = box.run_bootstrap(stdin_payload(script))
    assert res.returncode == 9
    assert res.stdout == b"$ echo x\nx\n$ (exit 9)\n"


def test_bootstrap_with_character_count_frame_would_truncate(box: Sandbox) -> None:
    """Guards the test above: a frame counting characters instead of bytes really does break the script."""
    script = box.localize(job_script(["echo ü€😀ü€😀 done"]).decode()).encode()
    wrong = str(len(script.decode())).encode() + b"\n" + script
    res = box.run_bootstrap(wrong)
    assert res.returncode != 0
    assert res.stdout.count("ü€😀ü€😀 done".encode()) <= 1, "the command itself must not have run"


# --- the workspace archive in, the side channel out --------------------------------------------------------------


def test_workspace_archive_is_unpacked_before_the_commands_and_the_rest_of_stdin_never_reaches_them(
    box: Sandbox,
) -> None:
    if not shutil.which("tar") or not shutil.which("dd"):
        pytest.skip("needs tar and dd")
    inbound = tar_bytes({"src/main.c": b"int main(void) { return 0; }\n", "README": b"hi\n"})
    io_ = WorkspaceIO(inbound_bytes=len(inbound), nonce="n0nce")
    script = box.localize(job_script(["cat README", "cat > stdin-seen"], io=io_).decode()).encode()
    res = box.run_bootstrap(stdin_payload(script) + inbound + b"echo INJECTED > injected\n")
    assert res.returncode == 0, res.stdout
    assert (box.workspace / "src" / "main.c").read_bytes().startswith(b"int main")
    assert b"$ cat README\nhi\n" in res.stdout
    assert (box.workspace / "stdin-seen").read_bytes() == b""
    assert not (box.workspace / "injected").exists()


def test_artifacts_go_to_the_side_channel_which_commands_cannot_write(box: Sandbox) -> None:
    if not shutil.which("tar") or not shutil.which("realpath"):
        pytest.skip("needs tar and realpath")
    io_ = WorkspaceIO(nonce="n0nce", artifacts=("dist/*", "none-*"), cache=("deps",))
    commands = ["mkdir dist deps", "echo a > dist/a", "echo d > deps/d", "echo forged >&9 || echo no-fd-9"]
    script = box.localize(job_script(commands, io=io_).decode())
    res = subprocess.run(
        [SH, "-c", script], stdin=subprocess.DEVNULL, capture_output=True, env=box.env(), timeout=30, check=False
    )
    assert res.returncode == 0, res.stdout
    assert b"no-fd-9" in res.stdout and b"forged" not in res.stderr
    assert b"nothing matches none-*" in res.stdout
    assert res.stderr.startswith(b"ORCH1 n0nce artifacts\n")
    assert b"ORCH1 n0nce cache\n" in res.stderr


def test_a_failed_script_hands_back_artifacts_only_when_always(box: Sandbox) -> None:
    if not shutil.which("tar") or not shutil.which("realpath"):
        pytest.skip("needs tar and realpath")
    for always, expected in ((True, True), (False, False)):
        io_ = WorkspaceIO(nonce="n0nce", artifacts=("out",), artifacts_always=always, cache=("deps",))
        script = box.localize(job_script(["echo x > out", "exit 5"], io=io_).decode())
        res = subprocess.run(
            [SH, "-c", script], stdin=subprocess.DEVNULL, capture_output=True, env=box.env(), timeout=30, check=False
        )
        assert res.returncode == 5
        assert (b"ORCH1 n0nce artifacts\n" in res.stderr) is expected
        assert b"cache" not in res.stderr  # a cache is saved after success only

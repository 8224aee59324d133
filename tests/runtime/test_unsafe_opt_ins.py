"""Pool config can never weaken isolation by accident: only the loudly-named `unsafe` opt-ins do, and each is
reported by `config check`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestrator.cli import main
from orchestrator.config import PoolConfig
from orchestrator.jobs.spec import JobSpec
from orchestrator.runtime.container_spec import build_container_spec

SPEC = JobSpec(id="j1", pool="p", repository="o/r", ref="main", sha="abcdef1", commands=["true"])


def options(pool: PoolConfig) -> dict[str, Any]:
    """Every option the engine is given for a job of `pool`, create arguments and host config together."""
    cs = build_container_spec(SPEC, pool, controller_id="c")
    return {**cs.create, **cs.host}


pool_fields = st.fixed_dictionaries(
    {},
    optional={
        "user": st.sampled_from(["1000", "1000:1000", "65534:65534", "10001:10001"]),
        "memory": st.sampled_from(["64m", "1g", 100 * 1024**2]),
        "cpus": st.floats(0.1, 16),
        "pids": st.integers(16, 4096),
        "network": st.sampled_from(["none", "ci-net", "bridge"]),
        "max_concurrent": st.integers(1, 50),
        "labels": st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=20), max_size=5),
        "workspace_size": st.sampled_from(["1g", "100m"]),
    },
)


@settings(max_examples=200, deadline=None)
@given(pool_fields)
def test_no_pool_config_without_opt_ins_weakens_isolation(fields: dict[str, Any]) -> None:
    pool = PoolConfig(image="img", **fields)
    kw = options(pool)
    assert kw["privileged"] is False
    assert kw["network_mode"] not in ("host",) and not str(kw["network_mode"]).startswith("container:")
    assert kw.get("pid_mode") is None
    assert kw["ipc_mode"] == "private"
    assert kw["cap_drop"] == ["ALL"] and kw["cap_add"] == []
    assert not {"binds", "volumes", "mounts"} & set(kw)
    assert kw["read_only"] is True
    assert "no-new-privileges:true" in kw["security_opt"]  # type: ignore[operator]
    assert not str(kw["user"]).startswith("0")
    assert "docker.sock" not in json.dumps(kw, default=str)


@pytest.mark.parametrize(
    "field",
    [
        {"network": "host"},
        {"network": "container:abc"},
        {"user": "0"},
        {"user": "root"},
        {"unsafe": {"add_capabilities": ["ALL"]}},
        {"unsafe": {"host_mounts": ["/var/run/docker.sock:/var/run/docker.sock"]}},
        {"unsafe": {"host_mounts": ["/run:/host-run:ro"]}},
        {"unsafe": {"host_mounts": ["relative:/x"]}},
        {"unsafe": {"host_mounts": ["/a:/b:rx"]}},
        {"unsafe": {"bogus": True}},
    ],
)
def test_refused_even_as_opt_in(field: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        PoolConfig(image="img", **field)


def test_each_opt_in_applies_and_warns() -> None:
    pool = PoolConfig(
        image="img",
        unsafe={
            "privileged": True,
            "host_network": True,
            "host_pid": True,
            "host_ipc": True,
            "add_capabilities": ["CAP_NET_ADMIN", "SYS_PTRACE"],
            "host_mounts": ["/srv/cache:/cache", "/srv/out:/out:rw"],
        },
    )
    kw = options(pool)
    assert kw["privileged"] is True and kw["network_mode"] == "host"
    assert kw["pid_mode"] == "host" and kw["ipc_mode"] == "host"
    assert kw["cap_add"] == ["NET_ADMIN", "SYS_PTRACE"]
    assert kw["binds"] == ["/srv/cache:/cache:ro", "/srv/out:/out:rw"]  # read-only unless said otherwise
    warnings = pool.unsafe.warnings("p")
    assert len(warnings) == 7
    assert any("PRIVILEGED" in w for w in warnings)


def test_config_check_prints_a_warning_per_opt_in(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'controller_id = "c"\ndata_dir = "d"\n[pools.risky]\nimage = "img"\n'
        '[pools.risky.unsafe]\nprivileged = true\nhost_mounts = ["/srv/cache:/cache"]\n'
        '[pools.safe]\nimage = "img"\n'
    )
    assert main(["config", "check", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert err.count("WARNING:") == 2
    assert "PRIVILEGED" in err and "/srv/cache:/cache" in err and "'safe'" not in err


@pytest.mark.parametrize("cap", ["ALL", "all", "CAP_ALL", "cap_all", " ALL", "ALL ", "Cap_All", "\tCAP_ALL"])
def test_every_spelling_of_all_capabilities_is_refused(cap: str) -> None:
    with pytest.raises(ValidationError, match="ALL is never allowed"):
        PoolConfig(image="img", unsafe={"add_capabilities": ["NET_RAW", cap]})


@pytest.mark.parametrize("cap", ["CAP_FOO", "NET_ADMINX", "SYS ADMIN", "", "CAP_"])
def test_unknown_capability_names_are_refused(cap: str) -> None:
    with pytest.raises(ValidationError, match="not a Linux capability name"):
        PoolConfig(image="img", unsafe={"add_capabilities": [cap]})


def test_capabilities_are_normalized_before_docker_sees_them() -> None:
    pool = PoolConfig(image="img", unsafe={"add_capabilities": ["cap_net_admin", " SYS_PTRACE", "CAP_NET_ADMIN"]})
    assert pool.unsafe.add_capabilities == ["NET_ADMIN", "SYS_PTRACE"]
    assert options(pool)["cap_add"] == ["NET_ADMIN", "SYS_PTRACE"]


@pytest.mark.parametrize(
    "source",
    [
        "/run/.",
        "//run",
        "///run",
        "/run/../run",
        "/./run",
        "/run/",
        "/var/run",
        "/var/run/.",
        "//var//run",
        "/var/../run",
        "/tmp/../run/docker",
        "/run/containerd",
        "/run/podman",
        "/run/crio",
        "/run/buildkit",
        "/run/user/1000",
        "/run/docker",
        "/",
        "//",
        "/var",
        "/srv/x/docker.sock",
        "/srv/podman.sock",
    ],
)
def test_runtime_socket_directories_are_refused_however_spelled(source: str) -> None:
    with pytest.raises(ValidationError, match="container runtime socket"):
        PoolConfig(image="img", unsafe={"host_mounts": [f"{source}:/hostrun:ro"]})


def test_host_mount_sources_are_kept_normalized() -> None:
    pool = PoolConfig(image="img", unsafe={"host_mounts": ["//srv//cache/./:/cache", "/srv/a/../out:/out:rw"]})
    assert pool.unsafe.host_mounts == ["/srv/cache:/cache", "/srv/out:/out:rw"]


def _config(tmp_path: Path, pool_extra: str, top: str = "") -> Path:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'controller_id = "c"\ndata_dir = "d"\n{top}[pools.p]\nimage = "img"\n{pool_extra}')
    return cfg


def test_config_check_resolves_symlinks_to_a_runtime_socket_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = tmp_path / "innocent"
    link.symlink_to("/run")
    cfg = _config(tmp_path, f'[pools.p.unsafe]\nhost_mounts = ["{link}:/cache:ro"]\n')
    assert main(["config", "check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "pools.p.unsafe.host_mounts" in err and "resolves to /run" in err and "runtime socket" in err


def test_config_check_refuses_the_configured_engine_socket_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(
        tmp_path,
        '[pools.p.unsafe]\nhost_mounts = ["/srv/engine:/e:ro"]\n',
        top='[docker]\nbase_url = "unix:///srv/engine/dockerd.sock"\n',
    )
    assert main(["config", "check", str(cfg)]) == 2
    assert "Docker engine's socket" in capsys.readouterr().err


def test_config_check_uses_docker_host_when_the_config_names_no_engine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///srv/engine/dockerd.sock")
    cfg = _config(tmp_path, '[pools.p.unsafe]\nhost_mounts = ["/srv:/e:ro"]\n')
    assert main(["config", "check", str(cfg)]) == 2
    assert "runtime socket" in capsys.readouterr().err


def test_an_ordinary_host_mount_still_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cache").mkdir()
    cfg = _config(tmp_path, f'[pools.p.unsafe]\nhost_mounts = ["{tmp_path}/cache:/cache"]\n')
    assert main(["config", "check", str(cfg)]) == 0
    assert "MOUNTS A HOST PATH" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("network", "expected"),
    [("bridge", "default bridge network"), ("ci-egress", "gives jobs network access (network = 'ci-egress')")],
)
def test_config_check_warns_about_networked_pools(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], network: str, expected: str
) -> None:
    cfg = _config(tmp_path, f'network = "{network}"\n')
    assert main(["config", "check", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert err.count("WARNING:") == 1 and expected in err


def test_a_pool_without_network_draws_no_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(_config(tmp_path, 'network = "none"\n'))]) == 0
    assert "WARNING" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("section", "line", "name"),
    [("server", "delivery_ttl_s = 3600", "server.delivery_ttl_s"), ("logs", "idle_flush_s = 1.0", "logs.idle_flush_s")],
)
def test_options_without_effect_still_load_and_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, line: str, name: str
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'controller_id = "c"\ndata_dir = "d"\n[{section}]\n{line}\n[pools.p]\nimage = "img"\n')
    assert main(["config", "check", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert f"NOTE: {name} has no effect" in err and "WARNING" not in err


def test_config_check_notes_a_runsc_pool_with_too_few_pids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(_config(tmp_path, 'runtime = "runsc"\npids = 256\n'))]) == 0
    err = capsys.readouterr().err
    assert "NOTE: pools.p.pids = 256 with runtime 'runsc'" in err and "about 24 processes" in err
    assert main(["config", "check", str(_config(tmp_path, 'runtime = "runsc"\npids = 2048\n'))]) == 0
    assert "NOTE" not in capsys.readouterr().err

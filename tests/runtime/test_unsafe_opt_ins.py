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
    kw = build_container_spec(SPEC, pool, controller_id="c").create_kwargs
    assert kw["privileged"] is False
    assert kw["network_mode"] not in ("host",) and not str(kw["network_mode"]).startswith("container:")
    assert kw.get("pid_mode") is None
    assert kw["ipc_mode"] == "private"
    assert kw["cap_drop"] == ["ALL"] and kw["cap_add"] == []
    assert "binds" not in kw and kw["volumes"] == {} and kw["mounts"] == []
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
    kw = build_container_spec(SPEC, pool, controller_id="c").create_kwargs
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

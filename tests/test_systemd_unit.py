"""The shipped unit stays sandboxed: systemd's own exposure score must stay in its "OK" band or better."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).parent.parent / "systemd" / "runner-orchestrator.service"


def test_unit_has_the_sandboxing_the_readme_promises() -> None:
    text = UNIT.read_text()
    for line in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ReadWritePaths=/var/lib/runner-orchestrator",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "CapabilityBoundingSet=",
        "LimitNOFILE=65536",
    ):
        assert line in text.splitlines(), line


def test_exposure_score_is_ok_or_better() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)], capture_output=True, text=True, timeout=60
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", out.stdout + out.stderr)
    if match is None:
        pytest.skip(f"this systemd-analyze cannot score unit files offline: {out.stderr[-200:]}")
    score = float(match.group(1))
    assert score <= 2.0, f"exposure {score} {match.group(2)}: the unit lost sandboxing"

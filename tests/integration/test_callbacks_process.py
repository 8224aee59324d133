"""Status callbacks from the controller as a real process: SIGKILLed with deliveries pending (the receiver down),
started again, and the receiver -- back by then -- gets every state of every job, in order, each under one id."""

from __future__ import annotations

import asyncio
import base64
import secrets
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from callback_receiver import Receiver
from conftest import job_spec

pytestmark = pytest.mark.docker

FINAL = {"succeeded", "failed", "timed_out", "cancelled", "error"}


async def test_sigkill_with_deliveries_pending_loses_none(controller_process: Any, tmp_path: Path) -> None:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    (tmp_path / "callback.secret").write_text(secret)
    (tmp_path / "callback.secret").chmod(0o600)
    receiver = Receiver(secret)  # its port is reserved; nothing listens yet
    extra = f"""
[sources.ci.callbacks]
url = "{receiver.url}"
secret_file = "callback.secret"
[callbacks]
backoff_initial_s = 0.1
backoff_max_s = 0.5
jitter_s = 0
poll_interval_s = 0.5
"""
    cp = controller_process(extra_toml=extra)
    await asyncio.to_thread(cp.start)
    specs = [job_spec(commands=["echo hi"]), job_spec(commands=["exit 3"])]
    for spec in specs:
        assert await asyncio.to_thread(cp.send, spec) == 202
    for spec in specs:
        assert (await asyncio.to_thread(cp.wait, spec["id"], FINAL))["status"] in FINAL
    await asyncio.sleep(0.5)  # a few failed attempts
    assert await asyncio.to_thread(cp.kill, signal.SIGKILL) == -signal.SIGKILL
    await receiver.start()
    try:
        await asyncio.to_thread(cp.start)
        expected = {specs[0]["id"]: "succeeded", specs[1]["id"]: "failed"}
        await receiver.wait_for(
            lambda: all(
                receiver.states(job_id) == ["queued", "starting", "running", final]
                for job_id, final in expected.items()
            ),
            timeout=60,
        )
        assert receiver.rejected == 0
        ids: dict[tuple[str, str], set[str]] = defaultdict(set)
        for got in receiver.received:
            ids[(got.job_id, got.state)].add(got.webhook_id)
        assert all(len(v) == 1 for v in ids.values()), ids
        failed = receiver.accepted(specs[1]["id"])[-1].payload["data"]
        assert (failed["exit_code"], failed["reason"]) == (3, "exit code 3")
        assert await asyncio.to_thread(cp.kill, signal.SIGTERM) == 0
    finally:
        await receiver.stop()

"""Redaction in the real log pipeline: a job writes ~100 MB through Docker's attach stream into the controller,
which redacts and stores it. Same job, same run, alternating: 1,000 registered secrets (each with its encoded
forms) vs none. Prints MB/s of each and the ratio (goal >= 0.5x), and checks no planted secret survives.

The secrets come from a stand-in credentials backend (the pipeline after the Vault exchange is what is measured).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import secrets
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker

sys.path.insert(0, str(Path(__file__).parent))
import _support as S

from orchestrator.app import build_app, build_controller
from orchestrator.credentials.base import JobCredentials, SecretFile
from orchestrator.jobs.states import Job


class StandInSecrets:
    """Hands every job the same secret list; delivers them as files like Vault secrets."""

    def __init__(self, values: list[str]) -> None:
        self.values = values

    async def acquire(self, job: Job) -> JobCredentials:
        return JobCredentials(secrets=[SecretFile(f"S{i}", v) for i, v in enumerate(self.values)])

    async def release(self, credentials: JobCredentials) -> None:
        return None

    async def revoke_accessor(self, accessor: str) -> bool:
        return False

    def stats(self) -> dict[str, int]:
        return {"errors": 0, "retries": 0}

    async def maintain(self) -> None:
        return None


def random_secret(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits + "-_", k=rng.randint(16, 40)))


async def run_once(
    bc_url: str, key: bytes, token: str, session: Any, megabytes: int, tag: str
) -> tuple[float, int, bytes]:
    # ~100 MB of log-like lines; the planted secret (S0) appears once per ~1 MB through base64 of a file read.
    command = (
        f"yes 'INFO 2026-11-29T01:00:00Z worker[42] processed item 12345 in 3.2ms status=ok' "
        f"| head -c {megabytes * 1_000_000}"
    )
    spec = S.job_spec(
        f"pipe-{tag}-{secrets.token_hex(4)}",
        [command, "test -e /run/secrets/S0 || exit 0", "cat /run/secrets/S0; echo; base64 /run/secrets/S0"],
        secrets=[{"path": "ci/bench/x", "key": "k", "name": "UNUSED"}],
        timeout_s=300,
    )
    body, headers = S.signed(key, spec)
    start = time.monotonic()
    async with session.post(f"{bc_url}/webhooks/{S.SOURCE}", data=body, headers=headers) as r:
        assert r.status == 202, await r.text()
    auth = {"Authorization": f"Bearer {token}"}
    while True:
        async with session.get(f"{bc_url}/api/v1/jobs/{spec['id']}", headers=auth) as r:
            job = await r.json()
        if job["status"] in ("succeeded", "failed", "timed_out", "cancelled", "error"):
            break
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - start
    assert job["status"] == "succeeded", job
    async with session.get(f"{bc_url}/api/v1/jobs/{spec['id']}/logs", headers=auth) as r:
        log = await r.read()
    return elapsed, len(log), log


async def main(args: argparse.Namespace) -> int:
    import aiohttp

    rng = random.Random(7)
    values = [random_secret(rng) for _ in range(args.secrets)]
    client = docker.from_env()
    results: dict[str, list[float]] = {"redacted": [], "plain": []}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        backends = {"redacted": StandInSecrets(values), "plain": StandInSecrets([])}
        served = {}
        for name, backend in backends.items():
            directory = Path(tmp) / name
            directory.mkdir()
            key, secret_file = S.write_secret(directory)
            token = secrets.token_urlsafe(16)
            cid = S.new_controller_id()
            cfg = S.make_config(
                directory,
                controller_id=cid,
                secret_file=secret_file,
                token=token,
                viewer=secrets.token_urlsafe(16),
                top={"logs": {"max_bytes": 400_000_000}},
                memory="256m",
            )
            controller = build_controller(cfg, credentials=backend)
            served[name] = (await S.serve(build_app(controller)), key, token, cid, controller)
        async with aiohttp.ClientSession() as session:
            order = ["redacted", "plain"]
            for round_no in range(args.rounds):
                for name in order if round_no % 2 == 0 else reversed(order):
                    srv, key, token, _, _ = served[name]
                    elapsed, size, log = await run_once(srv.url, key, token, session, args.megabytes, name)
                    results[name].append(elapsed)
                    sizes[name] = size
                    if name == "redacted":
                        planted = values[0].encode()
                        assert planted not in log and base64.b64encode(planted) not in log, "secret leaked"
                        assert b"[MASKED]" in log
        for srv, _, _, cid, _controller in served.values():
            await srv.runner.cleanup()
            S.check_no_leftovers(client, cid)
    rows = []
    for name in ("plain", "redacted"):
        med = S.median(results[name])
        rows.append([name, f"{sizes[name] / 1e6:.1f}", f"{med:.2f}", f"{sizes[name] / 1e6 / med:.1f}"])
    ratio = S.median(results["plain"]) / S.median(results["redacted"])
    print(S.machine_line())
    print(S.reproduce_line("bench/bench_redaction_pipeline.py", sys.argv[1:]))
    print(f"{args.rounds} rounds each, alternating; {args.secrets} registered secrets (with their encoded forms)")
    print(S.table(["pipeline", "log MB", "median s", "MB/s"], rows))
    print(f"result: redacted/plain throughput = {ratio:.2f}x (goal >= 0.5x: {'met' if ratio >= 0.5 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--secrets", type=int, default=1000)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    sys.exit(asyncio.run(main(parser.parse_args())))

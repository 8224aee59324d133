"""Live log followers vs job speed: a job writing ~100 MB of log with 0 followers vs 10 concurrent followers.

Why: the logs issue asks that followers never slow a job down (goal: job wall time with 10 followers within 10%
of the time with none) and that every follower receives exactly the stored log.

The controller runs as its own process (`python -m orchestrator.cli serve --config FILE`, JSON logs at info to a
file, `logs.max_bytes` = 200 MiB so nothing is cut, pool `max_concurrent = 1`), so the followers do not share its
CPU time accounting or its event loop. The job is
`yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 100000000` (busybox), i.e. 100,000,000 bytes of output plus
the echoed command line.

Followers are `curl --no-buffer` processes on `GET /api/v1/jobs/{id}/logs?follow=true` with a bearer token,
started right after the webhook is accepted, writing to files under the run's temp dir; they read as fast as they
can. With `--slow 1` (default) one more follower is rate-limited (`curl --limit-rate`, default 5M/s) so it is
still reading long after the job ended. After each job the stored log (file in the data dir) is hashed and every
follower's copy must have the same size and SHA-256.

Job wall time is taken two ways: from the controller's own record (`finished_at - created_at`: webhook received
-> final state stored) and from the client (webhook sent -> the job shows final; the job is polled every 50 ms in
both configurations, so the polling costs both sides the same). Configurations alternate (0, 10 / 10, 0 / ...),
`--rounds` each, after one unmeasured warm-up job.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import docker
from _support import (
    SOURCE,
    TEST_IMAGE,
    check_no_leftovers,
    job_spec,
    machine_line,
    median,
    new_controller_id,
    reproduce_line,
    signed,
    table,
)
from bench_throughput import ControllerProcess, proc_cpu_s, start_controller_process, stop_controller_process

LOG_BYTES = 100_000_000
COMMAND = f"yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {LOG_BYTES}"
LOG_CAP = 200 * 1024 * 1024


@dataclass
class Trial:
    followers: int
    job_id: str
    server_s: float  # finished_at - created_at (controller clock)
    client_s: float  # webhook sent -> seen final
    ctl_cpu_s: float
    log_size: int
    log_sha256: str
    fast_done_s: list[float]  # per fast follower: webhook sent -> its stream ended
    slow_done_s: float | None
    copies_ok: int
    copies: int


def sha256_of(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def follower(cp: ControllerProcess, job_id: str, out: Path, rate: str | None) -> subprocess.Popen[bytes]:
    cmd = [
        "curl",
        "--silent",
        "--show-error",
        "--fail",
        "--no-buffer",
        "--header",
        f"Authorization: Bearer {cp.token}",
        "--output",
        str(out),
        f"{cp.url}/api/v1/jobs/{job_id}/logs?follow=true",
    ]
    if rate:
        cmd[1:1] = ["--limit-rate", rate]
    return subprocess.Popen(cmd)


async def _job(session: aiohttp.ClientSession, cp: ControllerProcess, job_id: str) -> dict[str, object]:
    async with session.get(f"{cp.url}/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {cp.token}"}) as r:
        return dict(await r.json())


async def trial(
    session: aiohttp.ClientSession,
    cp: ControllerProcess,
    job_id: str,
    n_followers: int,
    slow: int,
    rate: str,
    tmp: Path,
) -> Trial:
    body, headers = signed(cp.key, job_spec(job_id, [COMMAND], timeout_s=300))
    cpu0 = proc_cpu_s(cp.pid)
    t0 = time.perf_counter()
    async with session.post(f"{cp.url}/webhooks/{SOURCE}", data=body, headers=headers) as resp:
        assert resp.status == 202, await resp.text()
        await resp.read()
    outs = [tmp / f"{job_id}.f{i}" for i in range(n_followers + (slow if n_followers else 0))]
    procs = [follower(cp, job_id, out, rate if i >= n_followers else None) for i, out in enumerate(outs)]
    done_at: dict[int, float] = {}
    job: dict[str, object] = {}
    client_s = cpu = float("nan")
    while True:
        for i, p in enumerate(procs):
            if i not in done_at and p.poll() is not None:
                done_at[i] = time.perf_counter() - t0
        if not job:
            view = await _job(session, cp, job_id)
            if view["status"] in {"succeeded", "failed", "timed_out", "cancelled", "error"}:
                job = view
                client_s = time.perf_counter() - t0
                cpu = proc_cpu_s(cp.pid) - cpu0
        if job and len(done_at) == len(procs):
            break
        await asyncio.sleep(0.05)
    assert job["status"] == "succeeded", job
    codes = [p.wait() for p in procs]
    assert all(c == 0 for c in codes), f"curl exit codes {codes}"
    stored = cp.data_dir / "logs" / f"{job_id}.log"
    size, digest = sha256_of(stored)
    ok = 0
    for out in outs:
        if sha256_of(out) == (size, digest):
            ok += 1
        out.unlink()
    finished, created = job["finished_at"], job["created_at"]
    assert isinstance(finished, float) and isinstance(created, float)
    return Trial(
        followers=n_followers,
        job_id=job_id,
        server_s=finished - created,
        client_s=client_s,
        ctl_cpu_s=cpu,
        log_size=size,
        log_sha256=digest,
        fast_done_s=[done_at[i] for i in range(n_followers)],
        slow_done_s=done_at.get(n_followers) if len(procs) > n_followers else None,
        copies_ok=ok,
        copies=len(outs),
    )


async def run(args: argparse.Namespace) -> int:
    controller_id = new_controller_id()
    client = docker.from_env()
    client.images.get(args.image)
    print(machine_line())
    print(
        f"controller_id={controller_id} image={args.image} data dir under {args.tmpdir or tempfile.gettempdir()}, "
        f"follower copies under {args.copies_dir}"
    )
    trials: list[Trial] = []
    expected_size = LOG_BYTES + len(f"$ {COMMAND}\n")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-followers-", dir=args.tmpdir) as tmp_name:
            tmp = Path(tmp_name)
            copies = Path(tempfile.mkdtemp(prefix="bench-followers-copies-", dir=args.copies_dir))
            extra = f"\n[logs]\nmax_bytes = {LOG_CAP}\n"
            cp = await start_controller_process(tmp, controller_id, 1, args.image, extra)
            try:
                async with aiohttp.ClientSession() as session:
                    await trial(session, cp, f"fol-{controller_id}-warm", 0, 0, args.slow_rate, copies)
                    for r in range(args.rounds):
                        order = (0, args.followers) if r % 2 == 0 else (args.followers, 0)
                        for n in order:
                            t = await trial(
                                session, cp, f"fol-{controller_id}-r{r}-f{n}", n, args.slow, args.slow_rate, copies
                            )
                            trials.append(t)
                            print(
                                f"  round {r}: {n:2d} followers: job {t.server_s:.2f} s (client {t.client_s:.2f} s), "
                                f"log {t.log_size} bytes, copies ok {t.copies_ok}/{t.copies}",
                                flush=True,
                            )
            finally:
                code = stop_controller_process(cp)
                shutil.rmtree(copies, ignore_errors=True)
            if code != 0:
                raise RuntimeError(f"controller exited {code} on SIGTERM")
    finally:
        check_no_leftovers(client, controller_id)
        client.close()

    argv = ["--rounds", str(args.rounds), "--followers", str(args.followers), "--slow", str(args.slow)]
    argv += ["--slow-rate", args.slow_rate]
    if args.tmpdir:
        argv += ["--tmpdir", args.tmpdir]
    if args.copies_dir != "/dev/shm":
        argv += ["--copies-dir", args.copies_dir]
    print(reproduce_line("bench/bench_followers.py", argv))
    base = [t for t in trials if t.followers == 0]
    loaded = [t for t in trials if t.followers > 0]
    rows = []
    for i, t in enumerate(trials):
        rows.append(
            [
                f"round {i // 2}",
                t.followers + (args.slow if t.followers else 0),
                t.server_s,
                t.client_s,
                t.ctl_cpu_s,
                max(t.fast_done_s) if t.fast_done_s else "-",
                t.slow_done_s if t.slow_done_s is not None else "-",
                f"{t.copies_ok}/{t.copies}",
            ]
        )
    print(
        f"job: {COMMAND!r}; stored log {expected_size} bytes expected; times in s from the webhook; "
        f"followers = {args.followers} fast + {args.slow} slow ({args.slow_rate}/s)"
    )
    print(
        table(
            [
                "",
                "followers",
                "job wall (server)",
                "job wall (client)",
                "ctl CPU s",
                "last fast follower done",
                "slow follower done",
                "copies == stored",
            ],
            rows,
        )
    )
    m0, m1 = median([t.server_s for t in base]), median([t.server_s for t in loaded])
    c0, c1 = median([t.client_s for t in base]), median([t.client_s for t in loaded])
    print(
        f"median job wall time: 0 followers {m0:.2f} s, {args.followers} followers {m1:.2f} s -> ratio {m1 / m0:.2f} "
        f"(client-side {c0:.2f} / {c1:.2f} s -> {c1 / c0:.2f}); goal <= 1.10: {'met' if m1 / m0 <= 1.10 else 'NOT met'}"
    )
    sizes_ok = all(t.log_size == expected_size for t in trials)
    copies_ok = all(t.copies_ok == t.copies for t in trials)
    print(
        f"stored logs all {expected_size} bytes: {sizes_ok}; every follower copy equal to the stored log "
        f"(size + sha256): {copies_ok} ({sum(t.copies for t in trials)} copies)"
    )
    return 0 if sizes_ok and copies_ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="measured jobs per configuration")
    parser.add_argument("--followers", type=int, default=10, help="fast followers in the loaded configuration")
    parser.add_argument("--slow", type=int, choices=[0, 1], default=1, help="add one rate-limited follower")
    parser.add_argument("--slow-rate", default="5M", help="curl --limit-rate of the slow follower")
    parser.add_argument("--tmpdir", default=None, help="parent of the data dir (default: $TMPDIR)")
    parser.add_argument(
        "--copies-dir", default="/dev/shm", help="where follower copies are written (tmpfs keeps disk I/O out)"
    )
    parser.add_argument("--image", default=TEST_IMAGE)
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()

"""Job start and teardown latency: webhook -> first log line vs raw Docker, and container exit -> removal.

Why: the runtime issue asks for (b) at most 30 ms median overhead from "webhook received" to "first log line"
compared with creating, starting and reading the same image straight through the Docker SDK, and (c) at most
0.5 s from a job's exit to its container being removed.

Four kinds of trial alternate (raw, raw-hardened, raw-job, controller, raw, ...), `--runs` each after a warm-up.
The raw kinds use the docker SDK low-level API straight from a thread: create, attach before start, start, read
the output up to the line `first` (that time is the figure), read to EOF, wait, remove.

* raw: `sh -c 'echo first'` in the test image with network none, read-only rootfs, tmpfs /tmp, user 10001.
* raw-hardened: the create options the controller uses for a job (`build_container_spec`: docker-init, cap-drop
  ALL, no-new-privileges, four tmpfs mounts, pids/memory/CPU limits, log driver none), only the entrypoint
  replaced by `sh -c 'echo first'`.
* raw-job: exactly the controller's container (same options, bootstrap entrypoint) fed the job script for
  `["echo first"]` over stdin, as the controller does. controller - raw-job is then the controller's own cost
  (HTTP, SQLite, scheduling, log store and follow); raw-job - raw is what the container setup costs.
* controller: the real controller in this process on 127.0.0.1 (`build_controller`/`build_app`, SQLite in a
  temp dir), a signed standard-webhooks delivery with `commands: ["echo first"]`, then
  `GET /api/v1/jobs/{id}/logs?follow=true` with a bearer token; time from sending the webhook to the first chunk
  that holds the output line `first` (the job's log also carries the echoed `$ echo first` just before it).
  The follow stream is read to its end, so each job is over before the next trial starts.
* raw-job/runsc and controller/runsc: raw-job and controller again, for a second pool of the same controller that
  differs only by `runtime = "runsc"` (gVisor) and a pids limit that leaves room for gVisor's own threads. They
  run in the same rounds, so the start cost of runsc against runc is measured under the same load. Left out when
  the engine offers no runsc runtime (`.ci/setup` adds it) or with --no-runsc.
* warm: controller again, for a third pool of the same controller that differs only by `warm = N` (--warm, 1 by
  default; 0 leaves the side out): the job claims a pre-started container whose bootstrap waits on stdin, so no
  container is created or started on its path. Before every trial of every kind the bench waits until the warm
  pool is full again and its refills and removals are over (`controller.warm.ready(pool)`, `settle()`), so each
  warm trial has a warm container available and no refill overlaps another kind's trial (the refill the claim
  itself triggers does run during the warm trial, as it would in service). Reported against the raw floor
  (raw, raw-job) of the same rounds as a ratio; the warm-pool issue's goal is a median <= 0.25x the raw floor.
  Its phases come from instrumenting the warm pool of this process from outside (the bench wraps
  `WarmPool.claim` and the claimed container's `send`/`pump`; no product code changes), from the job record
  (`created_at`, `started_at`) and from the client (202, first log byte).

Docker's event stream (filtered on this run's controller-id label, read in a thread) gives create/attach/
start/die/destroy times (`timeNano`) for every container: they split (b) into phases and give (c) = destroy - die.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import docker
from _support import (
    SOURCE,
    TEST_IMAGE,
    BenchController,
    check_no_leftovers,
    configure_logging,
    job_spec,
    machine_line,
    median,
    new_controller_id,
    pct,
    reproduce_line,
    signed,
    start_controller,
    table,
)

from orchestrator.config import PoolConfig
from orchestrator.jobs.spec import JobSpec
from orchestrator.runtime.container_spec import LABEL_CONTROLLER, build_container_spec, job_script, stdin_payload
from orchestrator.runtime.docker_engine import demultiplex

LABEL_BENCH = "io.runner-orchestrator.bench"
RAW_COMMAND = ["/bin/sh", "-c", "echo first"]
RAW_KINDS = ("raw", "raw-hardened", "raw-job")
RUNSC_KINDS = ("raw-job/runsc", "controller/runsc")
# gVisor's own threads (≈ 57, plus ≈ 8 per job process on the ptrace platform) count against the pids limit.
RUNSC_POOL = {"runtime": "runsc", "pids": 1024}
WARM_POOL = "warm"


class Events:
    """Container events for one controller id, collected by a thread: {container id: {action: timeNano}}."""

    def __init__(self, client: docker.DockerClient, controller_id: str) -> None:
        self._stream = client.events(
            decode=True, filters={"label": f"{LABEL_CONTROLLER}={controller_id}", "type": "container"}
        )
        self.seen: dict[str, dict[str, int]] = defaultdict(dict)
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="docker-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self._stream:
                cid = event.get("id") or event.get("Actor", {}).get("ID", "")
                action = str(event.get("Action", "")).split(":")[0]
                with self._cond:
                    self.seen[cid].setdefault(action, int(event["timeNano"]))
                    self._cond.notify_all()
        except Exception:  # the stream is closed under us at the end
            return

    def wait_for(self, cid: str, action: str, timeout: float = 15.0) -> int | None:
        with self._cond:
            self._cond.wait_for(lambda: action in self.seen.get(cid, {}), timeout=timeout)
            return self.seen.get(cid, {}).get(action)

    def close(self) -> None:
        self._stream.close()


@dataclass
class Trial:
    kind: str
    first_ms: float  # t0 -> first output line
    t0_ns: int
    container_id: str
    accepted_ms: float | None = None  # controller only: t0 -> 202
    first_byte_ms: float | None = None  # controller only: t0 -> first log chunk (the echoed command)
    end_ms: float | None = None  # controller only: t0 -> end of the follow stream (job final, container gone)
    phases: dict[str, float] = field(default_factory=dict)
    p0: float = 0.0  # time.perf_counter() at t0 (controller kinds), for the warm probe's stamps
    job: dict[str, Any] = field(default_factory=dict)  # controller kinds: the job record at the end


class WarmProbe:
    """Stamps (time.perf_counter) of the warm path of the job being measured, taken by wrapping, from outside,
    this process's WarmPool.claim and the claimed container's stream: when the job runner claimed, whether a warm
    container was handed out, when its script was sent over stdin, when the container's first output reached the
    controller and when the output line `first` did. Trials run one at a time, so one probe serves them all."""

    def __init__(self, warm_pool: Any, pool: str) -> None:
        self.stamps: dict[str, float] = {}
        self.container_id: str | None = None
        self.claims = {"warm": 0, "cold": 0}
        original, watched = warm_pool.claim, pool

        def claim(pool: str) -> Any:
            at = time.perf_counter()
            container = original(pool)
            self.stamps["claim"] = at
            self.stamps["claimed"] = time.perf_counter()
            if pool == watched:
                self.claims["warm" if container is not None else "cold"] += 1
            if container is not None:
                self.container_id = container.id
                self._wrap(container.stream)
            return container

        warm_pool.claim = claim

    def reset(self) -> None:
        self.stamps, self.container_id = {}, None

    def _wrap(self, stream: Any) -> None:
        send, pump = stream.send, stream.pump
        stamps = self.stamps

        def timed_send(payload: bytes) -> None:
            stamps.setdefault("send start", time.perf_counter())
            send(payload)
            stamps["send end"] = time.perf_counter()

        def timed_pump(on_output: Any, on_side: Any = None) -> None:
            out = bytearray()

            def seen(chunk: bytes) -> None:
                now = time.perf_counter()
                stamps.setdefault("first chunk", now)
                if "line chunk" not in stamps:
                    out.extend(chunk)
                    if b"\nfirst\n" in out or out.startswith(b"first\n"):
                        stamps["line chunk"] = now
                on_output(chunk)

            pump(seen, on_side)

        stream.send, stream.pump = timed_send, timed_pump


# (label, from, to): the chain (rows marked `=`) adds up to t0 -> first line; the others are side marks.
WARM_PHASES = (
    ("  t0 -> 202 (HTTP, signature, store insert, admission)", None, "accepted"),
    ("  t0 -> job created_at (record stamp, wall clock)", None, "created_at"),
    ("= t0 -> claim (HTTP + store + scheduling + runner setup)", None, "claim"),
    ("= claim (WarmPool.claim itself)", "claim", "claimed"),
    ("= claimed -> send start (store write container->job, thread hop)", "claimed", "send start"),
    ("= send start -> end (stdin delivery of the script)", "send start", "send end"),
    ("= send end -> first byte from the container", "send end", "first chunk"),
    ("= first byte -> chunk holding `first`", "first chunk", "line chunk"),
    ("= that chunk -> client reads `first` (log store, follow)", "line chunk", "first line"),
    ("  t0 -> job started_at (running stored, wall clock)", None, "started_at"),
)


def add_warm_phases(trial: Trial, probe: WarmProbe) -> None:
    """ms from t0 to each stamp of the warm path, then the differences named in WARM_PHASES."""
    at = {name: (stamp - trial.p0) * 1000 for name, stamp in probe.stamps.items()}
    at["accepted"] = trial.accepted_ms or float("nan")
    at["first line"] = trial.first_ms
    for key in ("created_at", "started_at"):
        if trial.job.get(key) is not None:
            at[key] = trial.job[key] * 1000 - trial.t0_ns / 1e6
    for label, start, end in WARM_PHASES:
        if end in at and (start is None or start in at):
            trial.phases[label] = at[end] - (at[start] if start else 0.0)


def _create_args(
    kind: str, controller_id: str, image: str, pool: PoolConfig, n: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(host config kwargs, create_container kwargs) for one raw trial; `kind` may carry a runtime suffix
    ("raw-job/runsc"), whose runtime is the pool's."""
    labels = {LABEL_CONTROLLER: controller_id, LABEL_BENCH: kind}
    base = kind.split("/")[0]
    if base == "raw":
        host_kw = {"network_mode": "none", "read_only": True, "tmpfs": {"/tmp": "rw,noexec,nosuid,size=64m"}}
        return host_kw, {"image": image, "command": RAW_COMMAND, "user": "10001:10001", "labels": labels}
    spec = JobSpec(
        id=f"{kind.replace('/', '-')}-{n}",
        pool="default",
        repository="example/app",
        ref="refs/heads/main",
        sha="3f786850e387550fdab836ed7e6dc881de23001b",
        commands=["echo first"],
    )
    # Exactly what DockerEngine.create passes.
    cspec = build_container_spec(spec, pool, controller_id=controller_id)
    host_kw: dict[str, Any] = dict(cspec.host)
    kw: dict[str, Any] = dict(cspec.create)
    kw["labels"] = labels
    if base == "raw-hardened":
        kw.update(entrypoint=RAW_COMMAND, command=[], stdin_open=False)
    return host_kw, kw


def raw_once(api: Any, controller_id: str, image: str, pool: PoolConfig, kind: str, n: int) -> Trial:
    """Create, attach, start, (send the job script,) read to the line `first`, read to EOF, wait, remove: the
    same sequence of Docker calls the controller makes, with nothing around it."""
    host_kw, kw = _create_args(kind, controller_id, image, pool, n)
    script = stdin_payload(job_script(["echo first"])) if kind.startswith("raw-job") else b""
    t0_ns = time.time_ns()
    p0 = time.perf_counter()
    cid = api.create_container(host_config=api.create_host_config(**host_kw), **kw)["Id"]
    try:
        params = {"stdin": 1 if script else 0, "stdout": 1, "stderr": 1, "stream": 1}
        sock = api.attach_socket(cid, params=params)
        raw_sock = getattr(sock, "_sock", sock)
        api.start(cid)
        if script:
            raw_sock.sendall(script)
        frames, out = bytearray(), b""
        first_ms = None
        while True:
            chunk = raw_sock.recv(65536)
            if not chunk:
                break
            frames += chunk
            out += b"".join(demultiplex(frames))
            if first_ms is None and (b"\nfirst\n" in out or out.startswith(b"first\n")):
                first_ms = (time.perf_counter() - p0) * 1000
        assert first_ms is not None, out
        api.wait(cid, timeout=30)
        sock.close()
    finally:
        api.remove_container(cid, force=True, v=True)
    return Trial(kind, first_ms, t0_ns, cid)


async def controller_once(
    session: aiohttp.ClientSession, bc: BenchController, job_id: str, pool: str = "default", kind: str = "controller"
) -> Trial:
    body, headers = signed(bc.key, job_spec(job_id, ["echo first"], pool=pool))
    auth = {"Authorization": f"Bearer {bc.token}"}
    t0_ns = time.time_ns()
    p0 = time.perf_counter()
    async with session.post(f"{bc.url}/webhooks/{SOURCE}", data=body, headers=headers) as resp:
        assert resp.status == 202, await resp.text()
        await resp.read()
    accepted_ms = (time.perf_counter() - p0) * 1000
    first_ms = first_byte_ms = None
    log = b""
    async with session.get(f"{bc.url}/api/v1/jobs/{job_id}/logs", params={"follow": "true"}, headers=auth) as resp:
        assert resp.status == 200, await resp.text()
        async for chunk in resp.content.iter_any():
            now_ms = (time.perf_counter() - p0) * 1000
            if first_byte_ms is None:
                first_byte_ms = now_ms
            log += chunk
            if first_ms is None and (b"\nfirst\n" in log or log.startswith(b"first\n")):
                first_ms = now_ms
    end_ms = (time.perf_counter() - p0) * 1000
    assert first_ms is not None, log
    async with session.get(f"{bc.url}/api/v1/jobs/{job_id}", headers=auth) as resp:
        job = await resp.json()
    assert job["status"] == "succeeded", job
    return Trial(kind, first_ms, t0_ns, job["container_id"], accepted_ms, first_byte_ms, end_ms, p0=p0, job=job)


async def wait_warm(bc: BenchController, pool: str, wanted: int, timeout_s: float = 60.0) -> None:
    """Until the pool holds `wanted` ready warm containers and no refill or removal is under way."""
    warm = bc.controller.warm
    assert warm is not None
    deadline = time.monotonic() + timeout_s
    while True:
        await warm.settle()
        if warm.ready(pool) >= wanted:
            await warm.settle()
            if warm.ready(pool) >= wanted:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"warm pool {pool!r} not refilled within {timeout_s} s: {warm.stats()}")
        await asyncio.sleep(0.01)


def add_phases(trial: Trial, events: Events) -> None:
    seen = {a: events.wait_for(trial.container_id, a) for a in ("create", "attach", "start", "die", "destroy")}
    ms = {a: (t - trial.t0_ns) / 1e6 for a, t in seen.items() if t is not None}
    if trial.kind != "warm" and {"create", "attach", "start"} <= ms.keys():  # a warm one was made before t0
        trial.phases["t0->create"] = ms["create"]
        trial.phases["create->attach"] = ms["attach"] - ms["create"]
        trial.phases["attach->start"] = ms["start"] - ms["attach"]
        trial.phases["start->first line"] = trial.first_ms - ms["start"]
    if {"die", "destroy"} <= ms.keys():
        trial.phases["die->destroy"] = ms["destroy"] - ms["die"]


async def run(args: argparse.Namespace) -> int:
    controller_id = new_controller_id()
    client = docker.from_env()
    client.images.get(args.image)
    offered = sorted(client.info().get("Runtimes") or {})
    runsc = not args.no_runsc and "runsc" in offered
    api = docker.from_env().api  # its own connection pool for the raw trials
    print(machine_line())
    if not runsc:
        print(f"runsc side left out ({'--no-runsc' if args.no_runsc else 'engine runtimes: ' + ', '.join(offered)})")
    print(f"controller_id={controller_id} image={args.image} data dir under {args.tmpdir or tempfile.gettempdir()}")
    events_client = docker.from_env()  # the event stream holds its connection for the whole run
    events = Events(events_client, controller_id)
    trials: list[Trial] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-latency-", dir=args.tmpdir) as tmp:
            configure_logging(args.log, Path(tmp))
            extra_pools: dict[str, dict[str, Any]] = {"sandboxed": RUNSC_POOL} if runsc else {}
            if args.warm:
                extra_pools[WARM_POOL] = {"warm": args.warm}
            bc = await start_controller(Path(tmp), controller_id, image=args.image, pools=extra_pools or None)
            pool = bc.controller.config.pools["default"]
            probe = WarmProbe(bc.controller.warm, WARM_POOL) if args.warm else None
            served_cold = 0

            async def quiet() -> None:  # the warm pool full again, no refill or removal under way
                if args.warm:
                    await wait_warm(bc, WARM_POOL, args.warm)

            try:
                async with aiohttp.ClientSession() as session:
                    for n in range(args.warmup + args.runs):
                        batch = []
                        for kind in RAW_KINDS:
                            await quiet()
                            batch.append(
                                await asyncio.to_thread(raw_once, api, controller_id, args.image, pool, kind, n)
                            )
                        await quiet()
                        batch.append(await controller_once(session, bc, f"lat-{controller_id}-{n}"))
                        if probe is not None:
                            await quiet()
                            probe.reset()
                            job_id = f"lat-{controller_id}-{n}-warm"
                            trial = await controller_once(session, bc, job_id, WARM_POOL, "warm")
                            if probe.container_id != trial.container_id:
                                served_cold += n >= args.warmup
                                print(f"WARNING: warm trial {n} was not served by a warm container", flush=True)
                            else:
                                add_warm_phases(trial, probe)
                            batch.append(trial)
                        if runsc:
                            runsc_pool = bc.controller.config.pools["sandboxed"]
                            await quiet()
                            batch.append(
                                await asyncio.to_thread(
                                    raw_once, api, controller_id, args.image, runsc_pool, "raw-job/runsc", n
                                )
                            )
                            job_id = f"lat-{controller_id}-{n}-runsc"
                            await quiet()
                            batch.append(await controller_once(session, bc, job_id, "sandboxed", "controller/runsc"))
                        if n >= args.warmup:
                            trials += batch
            finally:
                await bc.served.runner.cleanup()
        for trial in trials:
            add_phases(trial, events)
    finally:
        events.close()
        try:
            check_no_leftovers(client, controller_id)
        finally:
            api.close()
            events_client.close()
            client.close()

    argv = ["--runs", str(args.runs), "--warmup", str(args.warmup), "--log", args.log]
    if args.tmpdir:
        argv += ["--tmpdir", args.tmpdir]
    if args.no_runsc:
        argv.append("--no-runsc")
    argv += ["--warm", str(args.warm)]
    print(reproduce_line("bench/bench_job_latency.py", argv))
    print(f"at the end, {machine_line()}")  # the load others put on the machine during the run
    kinds = [*RAW_KINDS, "controller", *(("warm",) if args.warm else ()), *(RUNSC_KINDS if runsc else ())]
    by = {k: [t for t in trials if t.kind == k] for k in kinds}

    def stats(values: list[float]) -> list[object]:
        return [median(values), pct(values, 90), min(values), max(values)] if values else ["-"] * 4

    print(f"(b) t0 -> first output line, ms; n={args.runs} per kind, interleaved, log={args.log}")
    rows = [[k, *stats([t.first_ms for t in by[k]])] for k in kinds]
    ctl = by["controller"]
    rows.append(["  controller: t0 -> 202", *stats([t.accepted_ms or 0.0 for t in ctl])])
    rows.append(["  controller: t0 -> first log byte", *stats([t.first_byte_ms or 0.0 for t in ctl])])
    rows.append(["  controller: t0 -> follow stream end", *stats([t.end_ms or 0.0 for t in ctl])])
    print(table(["", "median", "p90", "min", "max"], rows))
    phase_names = ["t0->create", "create->attach", "attach->start", "start->first line"]
    print(
        "phases from Docker events (median ms; t0 = create call for raw, webhook POST for the controller; each event"
        " is stamped when Docker has done that step, so attach->start is mostly the runtime starting the container)"
    )
    print(
        table(
            ["", *phase_names],
            [
                [k, *[median([t.phases[p] for t in by[k] if p in t.phases]) for p in phase_names]]
                for k in kinds
                if k != "warm"  # made before t0: see the warm phases below
            ],
        )
    )
    med = {k: median([t.first_ms for t in by[k]]) for k in kinds}

    def paired(kind: str) -> float:
        return median([c.first_ms - r.first_ms for c, r in zip(ctl, by[kind], strict=True)])

    overhead = med["controller"] - med["raw"]
    print(
        f"overhead controller - raw: {overhead:.1f} ms (difference of medians), {paired('raw'):.1f} ms (median of "
        f"paired differences); goal <= 30 ms: {_verdict(overhead <= 30)} / {_verdict(paired('raw') <= 30)}"
    )

    def lean(kind: str) -> float:
        return median([t.first_ms - t.phases["attach->start"] for t in by[kind] if "attach->start" in t.phases])

    lean_med = {k: lean(k) for k in kinds if k != "warm"}
    print(
        "without Docker's start step (first line - (attach->start), the noisiest part), medians: controller - raw "
        f"{lean_med['controller'] - lean_med['raw']:.1f} ms = hardening options (raw-hardened - raw) "
        f"{lean_med['raw-hardened'] - lean_med['raw']:.1f} ms + bootstrap and stdin script (raw-job - raw-hardened) "
        f"{lean_med['raw-job'] - lean_med['raw-hardened']:.1f} ms + controller software (controller - raw-job) "
        f"{lean_med['controller'] - lean_med['raw-job']:.1f} ms"
    )
    print("(c) container exit (die) -> removed (destroy), ms")
    teardown = {
        k: [t.phases["die->destroy"] for t in by[k] if "die->destroy" in t.phases]
        for k in ("controller", "raw", *(RUNSC_KINDS if runsc else ()))
    }
    labelled = [("controller", teardown["controller"]), ("raw SDK wait+remove (baseline)", teardown["raw"])]
    if runsc:
        labelled.append(("controller/runsc", teardown["controller/runsc"]))
    rows = [[label, len(v), median(v), pct(v, 90), max(v, default=float("nan"))] for label, v in labelled]
    print(table(["", "n", "median", "p90", "max"], rows))
    teardown_med = median(teardown["controller"])
    missing = args.runs - len(teardown["controller"])
    print(f"result (c): median {teardown_med:.1f} ms; goal <= 500 ms: {_verdict(teardown_med <= 500)}")
    if runsc:
        _runsc_report(by, teardown)
    if args.warm:
        assert probe is not None
        _warm_report(by, args.warm, probe, served_cold)
    if missing:
        print(f"WARNING: {missing} controller containers have no die/destroy event")
        return 1
    return 0


def _runsc_report(by: dict[str, list[Trial]], teardown: dict[str, list[float]]) -> None:
    """The start cost of runsc against runc: the same container (raw-job) and the same job through the controller,
    from the same interleaved rounds, as medians and ratios."""
    print("runsc (gVisor) against runc, same rounds: t0 -> first output line, ms")
    rows = []
    for base in ("raw-job", "controller"):
        runc, gvisor = by[base], by[f"{base}/runsc"]
        a, b = median([t.first_ms for t in runc]), median([t.first_ms for t in gvisor])
        per_round = median([g.first_ms / r.first_ms for r, g in zip(runc, gvisor, strict=True)])
        rows.append([base, a, b, b - a, f"{b / a:.2f}x", f"{per_round:.2f}x"])
    print(table(["", "runc", "runsc", "runsc - runc", "ratio of medians", "median per-round ratio"], rows))

    def phase(kind: str, name: str) -> float:
        return median([t.phases[name] for t in by[kind] if name in t.phases])

    start_runc, start_runsc = phase("raw-job", "attach->start"), phase("raw-job/runsc", "attach->start")
    first_runc, first_runsc = phase("raw-job", "start->first line"), phase("raw-job/runsc", "start->first line")
    print(
        f"Docker's start step (attach->start, raw-job): runc {start_runc:.1f} ms, runsc {start_runsc:.1f} ms "
        f"({start_runsc / start_runc:.2f}x); start -> first line: runc {first_runc:.1f} ms, runsc {first_runsc:.1f} ms"
    )
    down_runc, down_runsc = median(teardown["controller"]), median(teardown["controller/runsc"])
    print(f"teardown (die -> destroy, controller): runc {down_runc:.1f} ms, runsc {down_runsc:.1f} ms")
    ctl_runc = median([t.first_ms for t in by["controller"]])
    ctl_runsc = median([t.first_ms for t in by["controller/runsc"]])
    print(
        f"result runsc: a job starts {ctl_runsc - ctl_runc:.0f} ms later on runsc than on runc (controller, webhook "
        f"-> first line, medians {ctl_runc:.0f} -> {ctl_runsc:.0f} ms, {ctl_runsc / ctl_runc:.2f}x)"
    )


def _warm_report(by: dict[str, list[Trial]], warm: int, probe: WarmProbe, served_cold: int) -> None:
    """The warm side against the raw floor of the same rounds, and where its time goes."""
    trials = by["warm"]
    print(
        f"warm (pool `{WARM_POOL}`, warm = {warm}, a warm container ready before every trial): t0 -> first output "
        f"line against the raw floor of the same rounds, ms; its claims over the run (warm-up included): "
        f"{probe.claims['warm']} warm, "
        f"{probe.claims['cold']} cold; measured trials served cold: {served_cold}"
    )
    rows = []
    med_warm = median([t.first_ms for t in trials])
    for floor in ("raw", "raw-job"):
        med_floor = median([t.first_ms for t in by[floor]])
        per_round = median([w.first_ms / f.first_ms for w, f in zip(trials, by[floor], strict=True)])
        rows.append([floor, med_floor, med_warm, f"{med_warm / med_floor:.2f}x", f"{per_round:.2f}x"])
    ctl = median([t.first_ms for t in by["controller"]])
    rows.append(["controller (cold)", ctl, med_warm, f"{med_warm / ctl:.2f}x", "-"])
    print(table(["floor", "floor median", "warm median", "ratio of medians", "median per-round ratio"], rows))
    print("warm phases, ms (`=` rows chain up to t0 -> first line; stamps from the bench's wrappers around this")
    print("process's WarmPool.claim and the claimed stream's send/pump, the job record and the client)")
    rows = []
    for label, _start, _end in WARM_PHASES:
        values = [t.phases[label] for t in trials if label in t.phases]
        rows.append([label, len(values), *([median(values), pct(values, 90), min(values), max(values)] if values
                                           else ["-"] * 4)])  # fmt: skip
    rows.append(["  t0 -> first output line (client)", len(trials), median([t.first_ms for t in trials]),
                 pct([t.first_ms for t in trials], 90), min(t.first_ms for t in trials),
                 max(t.first_ms for t in trials)])  # fmt: skip
    print(table(["", "n", "median", "p90", "min", "max"], rows))
    floor = median([t.first_ms for t in by["raw"]])
    ratio = med_warm / floor
    print(
        f"result warm: median {med_warm:.1f} ms = {ratio:.2f}x the raw docker create+start+first-line floor "
        f"({floor:.1f} ms, kind raw); goal <= 0.25x: {_verdict(ratio <= 0.25)}"
    )


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="measured trials per kind")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured trials per kind first")
    parser.add_argument("--log", choices=["json", "none"], default="json", help="controller log lines at info")
    parser.add_argument(
        "--tmpdir", default=None, help="parent of the data dir (default: $TMPDIR); /dev/shm shows the no-fsync case"
    )
    parser.add_argument("--image", default=TEST_IMAGE)
    parser.add_argument("--no-runsc", action="store_true", help="leave out the runsc (gVisor) side")
    parser.add_argument("--warm", type=int, default=1, help="warm containers of the warm side's pool (0: no warm side)")
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()

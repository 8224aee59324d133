"""Single-use GitHub Actions runners: webhook `queued` -> runner container started and online, against raw Docker.

Why: a forge job waits, before anything of it runs, for the controller to take the `workflow_job` webhook, ask
GitHub for a one-time (JIT) runner registration, create and start the hardened container and hand it the JIT
config over stdin; only then does the agent go online and take the job. How much of that is the controller's own
(intake, SQLite, the JIT call, scheduling), how much is Docker's, and how many GitHub API calls does a runner cost?

One in-process controller (`build_controller`/`build_app` through _support.start_controller, SQLite in a temp dir,
JSON log lines at info into a file) with a GitHub source (App auth with the fake's key and app id, hub-sha256
webhooks) and one runner pool: the busybox test agent image (images/test-forge-agent, `command =
"/usr/local/bin/agent.sh"`), 64m, 64 pids, `unsafe.host_network = true` so the agent reaches the fake on
127.0.0.1. The fake is tests/forges/fake_github.py (this script puts tests/ and tests/forges/ on sys.path, as
bench_credentials.py does for tests/openbao.py), subclassed only to stamp (time.time_ns) the moments it answers a
generate-jitconfig call, sees an agent's `/online` (proof the agent read its JIT config) and assigns a job.

Two kinds of trial alternate, `--jobs` each after `--warmup` unmeasured rounds (round n starts with kind n mod 2):

* controller: `queue_job(acme/app, [linux, x64], seconds=--job-seconds)`; the fake sends the signed `queued`
  webhook; t0 = the controller's answer (202) reaching the fake. Figures: t0 -> Docker's `start` event of the
  runner's container (the event stream filtered on the run's controller-id label, bench_job_latency's `Events`) and
  t0 -> the agent's `/online`. The trial waits for the forge job to complete and the controller's job to be final
  and its container destroyed before the next one.
* raw: the same container through the Docker SDK low-level API, from a thread: `build_container_spec` for the
  runner job the controller builds (read-only rootfs, four tmpfs mounts, cap-drop ALL, no-new-privileges,
  docker-init, limits, host network), create, attach, start, send the same stdin payload (the bootstrap's script
  writing the JIT config to /run/secrets/ACTIONS_RUNNER_INPUT_JITCONFIG). Its JIT config is registered at the fake
  beforehand, untimed, with the fake's personal access token and a label no job asks for (`bench-raw`), so the agent
  goes online and waits; the registration is then deleted (the agent exits 0 at its next poll). t0 = the create
  call. Same figures: t0 -> `start` event, t0 -> `/online`.

Where the controller's time goes: its forge runners' `register` and its Docker engine's `image_id`, `create` and
`start` are timed by wrappers set on the instances (nothing in orchestrator/ is changed), and after the run the
step between `register` and `image_id` -- the JIT config added to the job's SecretSet and the StreamRedactor
built -- is timed alone on one of the run's JIT configs.

(c) GitHub API calls come from the fake's request log, without the raw side's (made with the access token, caller
`pat`): per runner JIT calls, installation-token exchanges over the whole run, and everything else.

(d) `runner.min_idle` (warm registered runners) is measured only if orchestrator/config.py's RunnerPoolConfig has
that field when the script runs: a second pool, `warm` (labels linux + warm, min_idle 1), gets a job labelled
`warm` per round once one of its runners is online and idle at the fake; the figure is t0 -> the fake assigning the
job, against the same figure of the controller trials (no idle runner: the runner is made for the job).

Cleanup: the controller is stopped, the fake too, and no container with the run's label may be left.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import docker
from _support import (
    BenchController,
    check_no_leftovers,
    configure_logging,
    machine_line,
    median,
    new_controller_id,
    pct,
    reproduce_line,
    start_controller,
    table,
)
from aiohttp import web
from bench_job_latency import Events

from orchestrator.config import PoolConfig, RunnerPoolConfig
from orchestrator.credentials.base import SecretFile
from orchestrator.forges.github.client import JIT_CONFIG_FILE
from orchestrator.forges.runners import ANY_REF, ANY_SHA
from orchestrator.jobs.spec import JobSpec
from orchestrator.logs.redact import SecretSet, StreamRedactor
from orchestrator.runtime.container_spec import (
    LABEL_CONTROLLER,
    LABEL_JOB,
    build_container_spec,
    job_script,
    stdin_payload,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "forges"))
from fake_github import FakeGitHub

AGENT_IMAGE = os.environ.get("ORCHESTRATOR_FORGE_AGENT_IMAGE", "runner-orchestrator/test-forge-agent:local")
AGENT_COMMAND = "/usr/local/bin/agent.sh"
REPO = "acme/app"
INSTALLATION = 7001
JOB_LABELS = ["linux", "x64"]
WARM_LABELS = ["linux", "warm"]
RAW_LABEL = "bench-raw"  # no queued job asks for it: a raw agent goes online and waits
LABEL_BENCH = "io.runner-orchestrator.bench"
FINAL = {"succeeded", "failed", "timed_out", "cancelled", "error"}
KINDS = ("controller", "raw")
HAS_MIN_IDLE = "min_idle" in RunnerPoolConfig.model_fields


class TimedGitHub(FakeGitHub):
    """FakeGitHub that stamps (time.time_ns) JIT configs handed out, agents going online and jobs assigned."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.jit_ns: dict[int, int] = {}  # runner id -> generate-jitconfig answered
        self.online_ns: dict[int, int] = {}  # runner id -> its agent's accepted /online
        self.assigned_ns: dict[int, int] = {}  # forge job id -> given to a runner

    async def _generate_jitconfig(self, request: web.Request) -> web.Response:
        response = await super()._generate_jitconfig(request)
        if response.status == 201 and isinstance(response.body, bytes):
            self.jit_ns[int(json.loads(response.body)["runner"]["id"])] = time.time_ns()
        return response

    async def _agent_online(self, request: web.Request) -> web.Response:
        now = time.time_ns()
        response = await super()._agent_online(request)
        if response.status == 200:
            self.online_ns[int(request.match_info["agent_id"])] = now
        return response

    def _assign(self, job: Any, runner: Any) -> None:
        self.assigned_ns[job.id] = time.time_ns()
        super()._assign(job, runner)


@dataclass
class Trial:
    kind: str
    n: int
    t0_ns: int
    container_id: str
    runner_id: int
    forge_job: int | None = None
    sent_ms: float | None = None  # controller: the webhook POST, sent -> answered (202)
    marks: dict[str, float] = field(default_factory=dict)  # ms after t0


def ms_after(t0_ns: int, t_ns: int | None) -> float | None:
    return None if t_ns is None else (t_ns - t0_ns) / 1e6


# -- the controller side ---------------------------------------------------------------------------------------


async def controller_once(
    session: aiohttp.ClientSession, bc: BenchController, fake: TimedGitHub, events: Events, n: int, seconds: float
) -> Trial:
    forge_job = fake.queue_job(REPO, JOB_LABELS, seconds=seconds)
    delivery = next(d for d in fake.deliveries if d.job_id == forge_job and d.action == "queued")
    await delivery.done.wait()
    t0_ns = time.time_ns()
    assert delivery.status == 202, (delivery.status, delivery.error, delivery.answer)
    await fake.wait_job(forge_job, "completed", timeout=60)
    job_id = f"github-{forge_job}"
    job = await wait_final(session, bc, job_id)
    assert job["status"] == "succeeded", job
    cid = job["container_id"]
    await asyncio.to_thread(events.wait_for, cid, "destroy", 30.0)
    name = f"{bc.controller.config.controller_id}-{job_id}"
    (runner_id,) = [r.id for r in fake.runners.values() if r.name == name]
    trial = Trial("controller", n, t0_ns, cid, runner_id, forge_job, sent_ms=(delivery.seconds or 0.0) * 1000)
    return trial


async def wait_final(session: aiohttp.ClientSession, bc: BenchController, job_id: str) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {bc.token}"}
    deadline = time.monotonic() + 60
    while True:
        async with session.get(f"{bc.url}/api/v1/jobs/{job_id}", headers=auth) as resp:
            job: dict[str, Any] = await resp.json() if resp.status == 200 else {}
        if job.get("status") in FINAL:
            return job
        assert time.monotonic() < deadline, f"job {job_id} not final after 60 s: {job}"
        await asyncio.sleep(0.02)


class Calls:
    """Times calls of the controller's own objects, set on the instances (nothing in orchestrator/ changes): the
    forge runners' `register` (store, JIT call, audit) and the Docker engine's `image_id`, `create`, `attach`,
    `start`, each keyed by what it was called with: the job id (register; create, from the spec's labels), the
    container id (start); `image_id` (an image name) is the one between a job's register and its create."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, int]] = []  # (name, key, start time_ns, end time_ns)

    def wrap(self, obj: Any, name: str, key: Any) -> None:
        original = getattr(obj, name)

        async def timed(arg: Any) -> Any:
            start = time.time_ns()
            try:
                return await original(arg)
            finally:
                self.calls.append((name, str(key(arg)), start, time.time_ns()))

        setattr(obj, name, timed)

    def of(self, name: str, key: str) -> tuple[int, int] | None:
        return next(((s, e) for n, k, s, e in self.calls if n == name and k == key), None)

    def between(self, name: str, after_ns: int, before_ns: int) -> tuple[int, int] | None:
        return next(((s, e) for n, _, s, e in self.calls if n == name and after_ns <= s <= before_ns), None)


# -- the raw side ----------------------------------------------------------------------------------------------


async def pat_call(session: aiohttp.ClientSession, fake: FakeGitHub, method: str, path: str, **kw: Any) -> Any:
    headers = {"Authorization": f"token {fake.pat}", "Accept": "application/vnd.github+json"}
    async with session.request(method, f"{fake.url}{path}", headers=headers, **kw) as resp:
        body = await resp.read()
        assert resp.status in (201, 204), (resp.status, body)
        return json.loads(body) if body else None


def raw_start(api: Any, controller_id: str, pool: PoolConfig, n: int, jit: str) -> tuple[str, Any, int, dict[str, int]]:
    """Create, attach, start and feed the runner job's container exactly as the controller does: (id, socket, t0,
    {step: time_ns})."""
    spec = JobSpec(
        id=f"raw-{n}",
        pool="gh",
        repository=REPO,
        ref=ANY_REF,
        sha=ANY_SHA,
        commands=[f"exec {AGENT_COMMAND}"],
    )
    cspec = build_container_spec(spec, pool, controller_id=controller_id)
    kw: dict[str, Any] = dict(cspec.create)
    kw["labels"] = {LABEL_CONTROLLER: controller_id, LABEL_BENCH: "raw"}  # not `managed`: the controller leaves it be
    payload = stdin_payload(job_script(spec.commands, [SecretFile(name=JIT_CONFIG_FILE, value=jit, deliver="file")]))
    t0_ns = time.time_ns()
    cid = str(api.create_container(host_config=api.create_host_config(**cspec.host), **kw)["Id"])
    stamps = {"create returned": time.time_ns()}
    try:
        sock = api.attach_socket(cid, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        stamps["start call"] = time.time_ns()
        api.start(cid)
        getattr(sock, "_sock", sock).sendall(payload)
    except BaseException:
        api.remove_container(cid, force=True, v=True)
        raise
    return cid, sock, t0_ns, stamps


def raw_finish(api: Any, cid: str, sock: Any) -> int:
    try:
        return int(api.wait(cid, timeout=30)["StatusCode"])
    finally:
        sock.close()
        api.remove_container(cid, force=True, v=True)


async def raw_once(session: aiohttp.ClientSession, api: Any, bc: BenchController, fake: TimedGitHub, n: int) -> Trial:
    controller_id = bc.controller.config.controller_id
    body = {"name": f"raw-{controller_id}-{n}", "runner_group_id": 1, "labels": [RAW_LABEL], "work_folder": "_work"}
    answer = await pat_call(session, fake, "POST", f"/repos/{REPO}/actions/runners/generate-jitconfig", json=body)
    runner_id, jit = int(answer["runner"]["id"]), str(answer["encoded_jit_config"])
    pool = bc.controller.config.pools["gh"]
    cid, sock, t0_ns, stamps = await asyncio.to_thread(raw_start, api, controller_id, pool, n, jit)
    try:
        await fake.wait_for(lambda: runner_id in fake.online_ns, 30, f"raw agent {runner_id} online")
    finally:
        await pat_call(session, fake, "DELETE", f"/repos/{REPO}/actions/runners/{runner_id}")
        code = await asyncio.to_thread(raw_finish, api, cid, sock)
    assert code == 0, f"raw agent exited {code}"
    trial = Trial("raw", n, t0_ns, cid, runner_id, marks={"create call": 0.0})
    trial.marks.update({step: (t - t0_ns) / 1e6 for step, t in stamps.items()})
    return trial


# -- (d) min_idle ------------------------------------------------------------------------------------------------


def idle_warm(fake: FakeGitHub) -> bool:
    return any(
        r.status == "online" and not r.deleted and not r.busy and not r.ran_jobs and "warm" in r.label_names
        for r in fake.runners.values()
    )


async def warm_once(fake: TimedGitHub, n: int, seconds: float) -> Trial | None:
    try:
        await fake.wait_for(lambda: idle_warm(fake), 60, "an idle warm runner")
    except AssertionError:
        return None
    forge_job = fake.queue_job(REPO, ["warm"], seconds=seconds)
    delivery = next(d for d in fake.deliveries if d.job_id == forge_job and d.action == "queued")
    await delivery.done.wait()
    t0_ns = time.time_ns()
    await fake.wait_job(forge_job, "completed", timeout=60)
    trial = Trial("warm", n, t0_ns, "", fake.jobs[forge_job].runner_id or 0, forge_job)
    trial.marks["taken"] = (fake.assigned_ns[forge_job] - t0_ns) / 1e6
    return trial


def redactor_cost(fake: FakeGitHub, controller_id: str, min_length: int, mask: bytes, repeat: int = 20) -> str:
    """What the job runner does with the registration between `register` and the container's create, alone: the
    JIT config added to the job's SecretSet (all its forms) and the StreamRedactor built (the matcher compiled)."""
    jit = next(r.encoded_jit_config for r in fake.runners.values() if r.name.startswith(controller_id + "-"))
    took, forms = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        secrets_set = SecretSet(min_length=min_length)
        secrets_set.add(jit, name=JIT_CONFIG_FILE)
        StreamRedactor(secrets_set, mask=mask)
        took.append((time.perf_counter() - start) * 1000)
        forms = len(secrets_set)
    return (
        f"alone, the same JIT config ({len(jit)} characters, {forms} forms) added to a SecretSet and a StreamRedactor "
        f"built, {repeat} times: median {median(took):.1f} ms, min {min(took):.1f} ms (on the event loop's thread)"
    )


# -- the run -----------------------------------------------------------------------------------------------------


def settings(fake: FakeGitHub, tmp: Path, image: str, warm: bool) -> dict[str, Any]:
    key = tmp / "app.pem"
    key.write_text(fake.private_key_pem)
    key.chmod(0o600)
    secret = tmp / "gh.secret"
    secret.write_text("gh-bench-secret-" + secrets.token_hex(8))
    secret.chmod(0o600)

    def pool(labels: list[str], **runner: Any) -> dict[str, Any]:
        return {
            "image": image,
            "memory": "64m",
            "pids": 64,
            "max_concurrent": 2,
            "default_timeout_s": 120,
            "unsafe": {"host_network": True},
            "runner": {
                "source": "github",
                "labels": labels,
                "repositories": ["acme/*"],
                "command": AGENT_COMMAND,
                **runner,
            },
        }

    pools = {"gh": pool(JOB_LABELS)}
    if warm:
        pools["warm"] = pool(WARM_LABELS, min_idle=1, repositories=[REPO])  # warm runners need one place
    forge = {
        "kind": "github",
        "api_url": fake.url,
        "app_id": fake.app_id,
        "private_key_file": str(key),
        "reconcile_interval_s": 3600,
    }
    return {
        "server": {"host": "127.0.0.1", "port": 0, "max_body_bytes": 1024 * 1024},
        "sources": {"github": {"scheme": "hub-sha256", "secret_file": str(secret), "forge": forge}},
        "pools": pools,
    }


def add_marks(trial: Trial, events: Events, fake: TimedGitHub, calls: Calls) -> None:
    if trial.kind == "controller":
        job_id = f"github-{trial.forge_job}"
        found = {
            "register": calls.of("register", job_id),
            "create": calls.of("create", job_id),
            "start": calls.of("start", trial.container_id),
        }
        if found["register"] and found["create"]:
            found["image_id"] = calls.between("image_id", found["register"][1], found["create"][0])
        for name, call in found.items():
            if call is not None:
                trial.marks[f"{name} call"] = (call[0] - trial.t0_ns) / 1e6
                trial.marks[f"{name} returned"] = (call[1] - trial.t0_ns) / 1e6
    for action in ("create", "start"):
        value = ms_after(trial.t0_ns, events.wait_for(trial.container_id, action, 5.0))
        if value is not None:
            trial.marks[action] = value
    stamps = {"online": fake.online_ns.get(trial.runner_id)}
    if trial.kind == "controller":  # the raw side's JIT config is fetched before its t0, untimed
        stamps["jit"] = fake.jit_ns.get(trial.runner_id)
    for name, stamp in stamps.items():
        value = ms_after(trial.t0_ns, stamp)
        if value is not None:
            trial.marks[name] = value
    if trial.forge_job is not None and trial.forge_job in fake.assigned_ns:
        trial.marks["taken"] = (fake.assigned_ns[trial.forge_job] - trial.t0_ns) / 1e6


async def run(args: argparse.Namespace) -> int:
    controller_id = new_controller_id()
    client = docker.from_env()
    client.images.get(args.image)
    api = docker.from_env().api  # its own connection pool for the raw side's thread
    events_client = docker.from_env()
    events = Events(events_client, controller_id)
    print(machine_line())
    trials: list[Trial] = []
    warm: list[Trial] = []
    problems: list[str] = []
    fake = await TimedGitHub.start(job_seconds=args.job_seconds)
    fake.add_repository(REPO, installation_id=INSTALLATION)
    before_jobs = 0
    calls = Calls()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-forge-") as tmp_name:
            tmp = Path(tmp_name)
            configure_logging("json", tmp)
            top = settings(fake, tmp, args.image, HAS_MIN_IDLE and not args.no_min_idle)
            bc = await start_controller(tmp, controller_id, top=top)
            assert bc.controller.runners is not None
            calls.wrap(bc.controller.runners, "register", lambda job: job.id)
            calls.wrap(bc.controller.engine, "image_id", lambda image: image)
            calls.wrap(bc.controller.engine, "create", lambda cspec: cspec.create["labels"][LABEL_JOB])
            calls.wrap(bc.controller.engine, "start", lambda container_id: container_id)
            fake.webhook_url = f"{bc.url}/webhooks/github"
            fake.webhook_secret = Path(top["sources"]["github"]["secret_file"]).read_bytes().strip()
            print(
                f"controller_id={controller_id} image={args.image} fake GitHub at {fake.url} "
                f"(App {fake.app_id}, installation {INSTALLATION}); min_idle in RunnerPoolConfig: {HAS_MIN_IDLE}"
            )
            try:
                await asyncio.sleep(0.5)  # the start-up reconciliation pass, before the first job
                before_jobs = len(fake.request_log)
                async with aiohttp.ClientSession() as session:
                    for n in range(args.warmup + args.jobs):
                        batch: list[Trial] = []
                        for kind in KINDS[n % 2 :] + KINDS[: n % 2]:
                            if kind == "controller":
                                batch.append(await controller_once(session, bc, fake, events, n, args.job_seconds))
                            else:
                                batch.append(await raw_once(session, api, bc, fake, n))
                        if HAS_MIN_IDLE and not args.no_min_idle:
                            got = await warm_once(fake, n, args.job_seconds)
                            if got is None:
                                problems.append(f"round {n}: no idle warm runner within 60 s")
                            elif n >= args.warmup:
                                warm.append(got)
                        if n >= args.warmup:
                            trials += batch
            finally:
                await bc.served.runner.cleanup()
        for trial in trials:
            add_marks(trial, events, fake, calls)
        logs_cfg = bc.controller.config.logs
        redaction = redactor_cost(fake, controller_id, logs_cfg.min_secret_length, logs_cfg.mask.encode())
    finally:
        await fake.stop()
        events.close()
        try:
            check_no_leftovers(client, controller_id)
        finally:
            api.close()
            events_client.close()
            client.close()

    argv = ["--jobs", str(args.jobs), "--warmup", str(args.warmup), "--job-seconds", str(args.job_seconds)]
    if args.no_min_idle:
        argv.append("--no-min-idle")
    print(reproduce_line("bench/bench_forge_runners.py", argv))
    report(trials, warm, fake, controller_id, before_jobs, args, redaction)
    missing = [t.kind + str(t.n) for t in trials if not {"start", "online"} <= t.marks.keys()]
    if missing:
        problems.append(f"{len(missing)} trials have no start event or /online: {missing[:4]}")
    for problem in problems:
        print(f"WARNING: {problem}")
    return 1 if problems else 0


# -- the report --------------------------------------------------------------------------------------------------


def report(
    trials: list[Trial],
    warm: list[Trial],
    fake: TimedGitHub,
    controller_id: str,
    before: int,
    args: argparse.Namespace,
    redaction: str,
) -> None:
    by = {k: [t for t in trials if t.kind == k] for k in KINDS}
    raw_of = {t.n: t for t in by["raw"]}

    def values(kind: str, mark: str) -> list[float]:
        return [t.marks[mark] for t in by[kind] if mark in t.marks]

    def stats(vs: list[float]) -> list[object]:
        return [median(vs), pct(vs, 90), min(vs), max(vs)] if vs else ["-"] * 4

    print(
        f"(a) controller: webhook queued answered (202) -> ...; (b) raw: docker create call -> ...; ms, n={args.jobs} "
        "each, interleaved"
    )
    headers = ["", "median", "p90", "min", "max", "- raw", "ratio of medians", "median per-round ratio"]
    rows = []
    for mark, what in (("start", "container started (Docker start event)"), ("online", "agent online (read JIT)")):
        ctl, raw = values("controller", mark), values("raw", mark)
        per_round = [
            t.marks[mark] / raw_of[t.n].marks[mark]
            for t in by["controller"]
            if mark in t.marks and t.n in raw_of and mark in raw_of[t.n].marks
        ]
        rows.append([f"raw: {what}", *stats(raw), "", "", ""])
        rows.append(
            [
                f"controller: {what}",
                *stats(ctl),
                median(ctl) - median(raw),
                f"{median(ctl) / median(raw):.2f}x",
                f"{median(per_round):.2f}x",
            ]
        )
    rows.append(["controller: job taken (fake assigns it)", *stats(values("controller", "taken")), "", "", ""])
    sent = [t.sent_ms for t in by["controller"] if t.sent_ms is not None]
    rows.append(["controller: webhook sent -> 202 (before t0)", *stats(sent), "", "", ""])
    print(table(headers, rows))

    def phase(t: Trial, a: str, b: str) -> float | None:
        if b not in t.marks or (a != "t0" and a not in t.marks):
            return None
        return t.marks[b] - (0.0 if a == "t0" else t.marks[a])

    steps = [
        ("t0->create", "t0", "create"),
        ("create->start", "create", "start"),
        ("start->online", "start", "online"),
        ("online->job taken", "online", "taken"),
    ]

    def med_of(kind: str, a: str, b: str) -> object:
        vs = [v for v in (phase(t, a, b) for t in by[kind]) if v is not None]
        return median(vs) if vs else "-"

    print(
        "phases, median ms (t0: 202 for the controller, the create call for raw; JIT = the fake answering "
        "generate-jitconfig, before t0 and untimed for raw; online = the agent's /online reaching the fake)"
    )
    print(table(["", *[s[0] for s in steps]], [[k, *[med_of(k, a, b) for _, a, b in steps]] for k in KINDS]))
    inner = [
        ("t0 -> register called (intake, SQLite, queue, dispatch)", "t0", "register call"),
        ("register: store + generate-jitconfig + store, audit", "register call", "register returned"),
        ("  of it: register called -> JIT answered at the fake", "register call", "jit"),
        ("register -> image_id called (redactor with the JIT config)", "register returned", "image_id call"),
        ("image_id (docker image inspect)", "image_id call", "image_id returned"),
        ("image_id -> create called", "image_id returned", "create call"),
        ("create call -> create event", "create call", "create"),
        ("create call -> returned", "create call", "create returned"),
        ("create returned -> start called (SQLite save, attach)", "create returned", "start call"),
        ("start called -> start event", "start call", "start"),
    ]
    print("from t0 to the start event, step by step, median ms (controller: its calls timed on the instances)")
    rows = [[label, med_of("controller", a, b), med_of("raw", a, b)] for label, a, b in inner]
    print(table(["", "controller", "raw"], rows))
    print(redaction)

    # (c) the controller's GitHub API calls (the raw side's, made with the PAT, left out)
    ours = [r for r in fake.request_log if r.caller != "pat"]
    runners = [r for r in fake.runners.values() if r.name.startswith(controller_id + "-")]

    def route(path: str) -> str:
        return re.sub(r"/\d+", "/{id}", path)

    rounds = args.warmup + args.jobs
    counted = Counter((r.method, route(r.path), r.status) for r in ours[before:])
    startup = Counter((r.method, route(r.path), r.status) for r in ours[:before])
    print(
        f"(c) GitHub API calls by the controller (fake's request log, raw side's PAT calls left out): "
        f"{len(runners)} runners registered in {rounds} rounds" + (" (+ the warm pool's, min_idle)" if warm else "")
    )
    rows = [
        [f"{m} {p} -> {s}", startup.get((m, p, s), 0), n, f"{n / max(len(runners), 1):.2f}"]
        for (m, p, s), n in sorted(counted.items(), key=lambda kv: -kv[1])
    ]
    rows += [[f"{m} {p} -> {s}", n, 0, "0.00"] for (m, p, s), n in startup.items() if (m, p, s) not in counted]
    print(table(["call", "start-up (before job 1)", "during the jobs", "per runner"], rows))
    jit = sum(1 for r in ours if r.path.endswith("/generate-jitconfig"))
    tokens = sum(1 for r in ours if r.path.endswith("/access_tokens"))
    other = len(ours) - jit - tokens
    goal = "met" if jit == len(runners) and tokens == 1 else "NOT met"
    print(
        f"JIT calls per runner: {jit / max(len(runners), 1):.2f} ({jit} for {len(runners)}); installation-token "
        f"exchanges over the run: {tokens}; other calls: {other} ({other / max(len(runners), 1):.2f} per runner); "
        f"goal one JIT call per runner with a cached token: {goal}"
    )

    # (d)
    if not HAS_MIN_IDLE:
        print("(d) skipped: orchestrator/config.py RunnerPoolConfig has no min_idle field")
    elif args.no_min_idle:
        print("(d) skipped: --no-min-idle")
    else:
        cold, hot = values("controller", "taken"), [t.marks["taken"] for t in warm if "taken" in t.marks]
        print(f"(d) 202 -> job taken by a runner, ms: min_idle 1 (n={len(hot)}) vs none (the controller trials)")
        rows = [["min_idle 0", *stats(cold), "", ""]]
        if hot:
            rows.append(["min_idle 1", *stats(hot), median(hot) - median(cold), f"{median(hot) / median(cold):.2f}x"])
        print(table(["", "median", "p90", "min", "max", "- min_idle 0", "ratio of medians"], rows))

    ctl_start, raw_start_ms = median(values("controller", "start")), median(values("raw", "start"))
    ctl_online, raw_online = median(values("controller", "online")), median(values("raw", "online"))
    print(
        f"result: webhook 202 -> runner container started {ctl_start:.0f} ms (raw create -> start "
        f"{raw_start_ms:.0f} ms, {ctl_start / raw_start_ms:.2f}x); -> agent online with its JIT config "
        f"{ctl_online:.0f} ms (raw "
        f"{raw_online:.0f} ms, {ctl_online / raw_online:.2f}x); {jit / max(len(runners), 1):.2f} JIT calls per runner, "
        f"{tokens} token exchange(s) in all."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30, help="measured trials per kind")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first")
    parser.add_argument("--quick", action="store_true", help="a small run: --jobs 5 --warmup 1")
    parser.add_argument("--job-seconds", type=float, default=0.1, help="how long the agent 'runs' each forge job")
    parser.add_argument("--no-min-idle", action="store_true", help="leave out (d) even if min_idle exists")
    parser.add_argument("--image", default=AGENT_IMAGE)
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.warmup = 5, 1
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()

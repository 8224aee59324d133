"""`orchestrator` command line: run the controller, check a config, inspect and steer jobs, send a test webhook."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import secrets
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from orchestrator.access.tokens import USAGE_FILE, read_usage, report
from orchestrator.config import ConfigError, hash_token, load_config

log = logging.getLogger("orchestrator")
EXIT_USAGE = 2
DEFAULT_URL = "http://127.0.0.1:8080"


def _fail(message: str, code: int = 1) -> int:
    print(f"orchestrator: {message}", file=sys.stderr)
    return code


# -- serve -------------------------------------------------------------------------------------------------------


async def _serve(config_path: Path, drain_timeout_s: float) -> int:
    from orchestrator.app import build_app, build_controller, drain
    from orchestrator.platform import structured_logs
    from orchestrator.platform.connections import raise_descriptor_limit
    from orchestrator.platform.serving import app_runner, listening_socket, serve_socket

    structured_logs.configure(os.environ.get("ORCHESTRATOR_LOG_LEVEL", "info"))
    config = load_config(config_path)
    raise_descriptor_limit()  # before the connection caps are planned against it
    controller = build_controller(config)
    app = build_app(controller, drain_timeout_s=drain_timeout_s)
    runner = app_runner(app, limits=controller.connection_limits)
    controller.connection_guards["port"] = runner.guard
    await runner.setup()
    try:
        sock = listening_socket(config.server.host, config.server.port)
    except OSError as exc:
        where = f"{config.server.host}:{config.server.port}"
        raise OSError(exc.errno, f"server.port: cannot listen on {where}: {exc.strerror}") from None
    await serve_socket(runner, sock)
    port = sock.getsockname()[1]  # the one the kernel chose for port = 0
    listening = {"event": "listening", "url": f"http://{config.server.host}:{port}"}
    if controller.webhook_listener is not None:
        listening["webhook_url"] = controller.webhook_listener.url
    print(json.dumps(listening), file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: draining running jobs", extra={"drain_timeout_s": drain_timeout_s})
    await drain(controller, drain_timeout_s)  # still listening: new webhooks get 503 + Retry-After
    await runner.cleanup()
    log.info("stopped")
    return 0


# -- config ------------------------------------------------------------------------------------------------------


def _config_check(path: Path) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"{exc.path}: invalid configuration", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_USAGE
    for warning in config.warnings():
        print(f"WARNING: {warning}", file=sys.stderr)
    for note in config.notes():
        print(f"NOTE: {note}", file=sys.stderr)
    print(f"{path}: OK (controller {config.controller_id}, {len(config.pools)} pool(s), digest {config.digest()[:16]})")
    return 0


def _token_new(name: str, role: str, expires_days: int | None) -> int:
    token = secrets.token_urlsafe(32)
    print(f"token (give to the client, shown once): {token}", file=sys.stderr)
    entry = f'[[api.tokens]]\nname = "{name}"\nrole = "{role}"\nsha256 = "{hash_token(token)}"'
    if expires_days is not None:
        expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=expires_days)
        entry += f"\nexpires = {expires.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    print(entry)
    return 0


def _token_list(config_path: Path, as_json: bool) -> int:
    """The configured tokens with scope, expiry and last use (from this controller's data dir); exit 1 when one
    is expired or unused for `api.unused_token_days`, so a cron job can report it."""
    config = load_config(config_path)
    usage = read_usage(config.data_dir / USAGE_FILE)
    rows = report(config.api.tokens, usage, now=time.time(), unused_days=config.api.unused_token_days)
    if as_json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    else:
        table = [("NAME", "ROLE", "SCOPE", "EXPIRES", "LAST USED", "STATUS")]
        table += [(r.name, r.role, r.scope, r.expires, r.last_used, r.status) for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    attention = [r for r in rows if r.status not in ("ok", "expires soon")]
    return 1 if attention else 0


def _audit_file(args: argparse.Namespace) -> Path | None:
    """The FILE argument, else <data_dir>/audit.jsonl of --config; None (after saying so) when neither is given."""
    from orchestrator.evidence.audit import AUDIT_FILE_NAME

    if args.file is not None:
        return Path(args.file)
    if args.config is None:
        _fail("give the audit file or --config", EXIT_USAGE)
        return None
    return load_config(args.config).data_dir / AUDIT_FILE_NAME


def _audit(args: argparse.Namespace) -> int:
    if args.audit_cmd == "search":
        return _audit_search(args)
    if args.audit_cmd == "export":
        return _audit_export(args)
    return _audit_verify(args)


def _audit_verify(args: argparse.Namespace) -> int:
    """0 = intact, 1 = tampered (or truncated below the anchor), 2 = usage error."""
    from cryptography.exceptions import UnsupportedAlgorithm

    from orchestrator.evidence.audit import PUBLIC_KEY_FILE_NAME, verify_file
    from orchestrator.evidence.canonical import SHA256_HEX
    from orchestrator.evidence.keys import load_public

    file = _audit_file(args)
    if file is None:
        return EXIT_USAGE
    key_path = args.pubkey if args.pubkey is not None else file.with_name(PUBLIC_KEY_FILE_NAME)
    try:
        public_key = load_public(key_path.read_bytes())
    except (OSError, ValueError, UnsupportedAlgorithm) as exc:
        return _fail(f"cannot load the audit public key {key_path}: {exc}", EXIT_USAGE)
    if args.expect_head is not None and not SHA256_HEX.fullmatch(args.expect_head.lower()):
        return _fail("--expect-head must be a 64-digit hex SHA-256", EXIT_USAGE)
    if args.expect_seq is not None and args.expect_seq < 0:
        return _fail("--expect-seq must be >= 0", EXIT_USAGE)
    if args.expect_prev is not None and not SHA256_HEX.fullmatch(args.expect_prev.lower()):
        return _fail("--expect-prev must be a 64-digit hex SHA-256", EXIT_USAGE)
    try:
        result = verify_file(
            file, public_key, expect_head=args.expect_head, expect_seq=args.expect_seq, expect_prev=args.expect_prev
        )
    except OSError as exc:
        return _fail(f"cannot read {file}: {exc}", EXIT_USAGE)
    if result.ok and result.anchored_on is not None:
        print(
            f"OK: {result.records} records (seq {result.first_seq}..{result.last_seq}), verified from seq "
            f"{result.first_seq} anchored on prev {result.anchored_on}, head {result.head}"
        )
        return 0
    if result.ok:
        print(f"OK: {result.records} records, head {result.head or '-'}")
        return 0
    print(f"TAMPERED: {result.problem}")
    return 1


def _audit_times(args: argparse.Namespace) -> tuple[float | None, float | None] | None:
    """--since/--until as POSIX seconds; None (after naming the option) when one does not parse."""
    from orchestrator.evidence.audit_search import parse_time

    times: list[float | None] = []
    for option, text in (("--since", args.since), ("--until", args.until)):
        try:
            times.append(None if text is None else parse_time(text))
        except ValueError as exc:
            _fail(f"{option}: {exc}", EXIT_USAGE)
            return None
    return times[0], times[1]


def _audit_range(args: argparse.Namespace) -> tuple[Path, tuple[float | None, float | None]] | None:
    """The trail to read and --since/--until, for search and export; None (after saying why) on a usage error."""
    file = _audit_file(args)
    times = _audit_times(args) if file is not None else None
    if file is None or times is None:
        return None
    if not file.exists():
        _fail(f"cannot read {file}: no such file", EXIT_USAGE)
        return None
    return file, times


def _shown(value: Any) -> str:
    """A field of a record for a terminal: text a webhook sender chose is quoted when it holds spaces or control
    characters, so it cannot fake columns or lines (or move the cursor)."""
    if value is None:
        return "-"
    text = str(value)
    return text if text and text.isprintable() and " " not in text else json.dumps(text)


def _audit_actor(actor: Any) -> str:
    if not isinstance(actor, dict):
        return _shown(actor)
    kind = actor.get("type")
    if kind == "webhook":
        return f"webhook:{_shown(actor.get('source'))}"
    if kind == "api":
        return f"api:{_shown(actor.get('name') or actor.get('token_name'))}"
    return _shown(kind)


def _audit_search(args: argparse.Namespace) -> int:
    """One line per matching record (or JSON Lines with --json), oldest first; the cursor for more on stderr."""
    from orchestrator.evidence.audit_search import MAX_LIMIT, AuditQuery, search

    if not 1 <= args.limit <= MAX_LIMIT:
        return _fail(f"--limit must be 1..{MAX_LIMIT}", EXIT_USAGE)
    if args.after is not None and args.after < 0:
        return _fail("--after must be >= 0", EXIT_USAGE)
    if (found := _audit_range(args)) is None:
        return EXIT_USAGE
    file, times = found
    query = AuditQuery(args.actor, args.target, args.action, times[0], times[1], args.outcome)
    page = search(file, query, after=args.after, limit=args.limit)
    if not args.json:
        print(f"{'SEQ':>8}  {'TIME':24}  {'ACTOR':20}  {'ACTION':26}  {'TARGET':32}  {'OUTCOME':10}  HASH")
    for hit in page.hits:
        r = hit.record
        if args.json:
            print(json.dumps({"hash": hit.hash, "record": r}, sort_keys=True))
        else:
            print(
                f"{hit.seq:>8}  {_shown(r.get('time')):24}  {_audit_actor(r.get('actor')):20}  "
                f"{_shown(r.get('action')):26}  {_shown(r.get('target')):32}  {_shown(r.get('outcome')):10}  {hit.hash}"
            )
    if page.next_cursor is not None:
        print(f"more records match: continue with --after {page.next_cursor}", file=sys.stderr)
    return 0


def _audit_export(args: argparse.Namespace) -> int:
    """Writes a verifiable slice (contiguous, ending in a signed record) atomically, mode 0600."""
    import shlex

    from orchestrator.evidence.audit import PUBLIC_KEY_FILE_NAME
    from orchestrator.evidence.audit_search import export
    from orchestrator.platform.files import write_atomic_with

    for option, value in (("--from-seq", args.from_seq), ("--to-seq", args.to_seq)):
        if value is not None and value < 0:
            return _fail(f"{option} must be >= 0", EXIT_USAGE)
    if (found := _audit_range(args)) is None:
        return EXIT_USAGE
    file, times = found
    out: Path = args.out
    if out.exists() and out.resolve() == file.resolve():
        return _fail("--out is the audit trail itself; export to another file", EXIT_USAGE)
    summary = write_atomic_with(
        out,
        lambda stream: export(file, stream, first_seq=args.from_seq, last_seq=args.to_seq, since=times[0],
                              until=times[1]),
        mode=0o600,
    )  # fmt: skip
    pubkey = file.with_name(PUBLIC_KEY_FILE_NAME)
    print(f"exported records {summary.first_seq}..{summary.last_seq} ({summary.records} records) of {file} to {out}")
    print(f"anchor (prev of record {summary.first_seq}): {summary.first_prev}")
    print(f"head (record {summary.last_seq}, signed): {summary.head}")
    print("check it with:")
    print(
        f"  orchestrator audit verify {shlex.quote(str(out))} --expect-prev {summary.first_prev} "
        f"--pubkey {shlex.quote(str(pubkey))}"
    )
    if summary.first_seq > 0:
        print(f"the anchor vouches for the slice only if it equals a hash of record {summary.first_seq - 1} you hold")
    return 0


def _attest_verify(args: argparse.Namespace) -> int:
    """`OK: ...` on stdout and 0, or `INVALID: <reason>` on stderr and 1: what a deploy step gates on."""
    from orchestrator.evidence.attestation import AttestationError, verify_file

    try:
        job = verify_file(
            args.file,
            args.pubkey,
            expect_sha=args.expect_sha,
            expect_repository=args.expect_repository,
            require_success=not args.allow_failed,
            expect_ref=args.expect_ref,
            expect_source=args.expect_source,
            require_checkout=args.require_checkout,
            artifact=args.artifact,
            require_approval=args.require_approval,
        )
    except AttestationError as exc:
        print(f"INVALID: {exc}", file=sys.stderr)
        return 1
    print(f"OK: job {job.job_id} {job.state} {job.repository}@{job.sha}")
    if job.fetched_commit:
        print(f"OK: commit {job.fetched_commit} of {job.ref} was fetched by the controller from {job.fetched_from}")
    if job.approval is not None:
        a = job.approval
        print(f"OK: {a.get('decision')} by {a.get('by')} at {a.get('at')}: {a.get('comment')!r}")
    if args.artifact is not None:
        digest = _sha256(args.artifact)  # verify_file checked it is a subject
        print(f"OK: {args.artifact} is artifact {job.artifacts[digest]} (sha256 {digest}) of job {job.job_id}")
    return 0


def _sha256(path: Path) -> str:
    from orchestrator.evidence.attestation import sha256_file

    return sha256_file(path)


# -- API client --------------------------------------------------------------------------------------------------


def _client_token(args: argparse.Namespace) -> str:
    if args.token_file:
        return str(Path(args.token_file).read_text(encoding="utf-8").strip())
    token = os.environ.get("ORCHESTRATOR_TOKEN", "")
    if not token:
        raise SystemExit(_fail("set ORCHESTRATOR_TOKEN or pass --token-file", EXIT_USAGE))
    return token


async def _request(args: argparse.Namespace, method: str, path: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {_client_token(args)}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
        session.request(method, args.url.rstrip("/") + path, headers=headers) as resp,
    ):
        body = await resp.json(content_type=None)
        return resp.status, body


def _print_jobs(jobs: list[dict[str, Any]]) -> None:
    print(f"{'JOB':32} {'STATUS':10} {'POOL':12} {'REPOSITORY':28} {'CREATED':20}")
    for j in jobs:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j["created_at"]))
        print(f"{j['job_id']:32} {j['status']:10} {j['pool']:12} {j['repository']:28} {created:20}")


async def _jobs(args: argparse.Namespace) -> int:
    if args.jobs_cmd == "logs":
        return await _follow_logs(args)
    if args.jobs_cmd == "artifacts":
        return await _artifacts(args)
    if args.jobs_cmd == "list":
        query = "?" + "&".join(f"{k}={v}" for k, v in (("status", args.status), ("pool", args.pool)) if v)
        status, body = await _request(args, "GET", "/api/v1/jobs" + (query if len(query) > 1 else ""))
    elif args.jobs_cmd == "show":
        status, body = await _request(args, "GET", f"/api/v1/jobs/{args.job_id}")
    else:
        status, body = await _request(args, "POST", f"/api/v1/jobs/{args.job_id}/cancel")
    if status >= 400:
        return _fail(f"{status}: {body.get('error', body)}")
    if args.jobs_cmd == "list" and not args.json:
        _print_jobs(body["jobs"])
    else:
        print(json.dumps(body, indent=2))
    return 0


async def _artifacts(args: argparse.Namespace) -> int:
    """Lists a job's artifacts; with --download DIR writes each under DIR (its path kept), checking its sha256."""
    status, manifest = await _request(args, "GET", f"/api/v1/jobs/{args.job_id}/artifacts")
    if status >= 400:
        return _fail(f"{status}: {manifest.get('error', manifest)}")
    if args.download is None:
        if args.json:
            print(json.dumps(manifest, indent=2))
            return 0
        print(f"{'SIZE':>12}  {'SHA256':64}  NAME")
        for f in manifest["files"]:
            print(f"{f['size']:>12}  {f['sha256']:64}  {f['name']}")
        for line in manifest.get("refused", []) + manifest.get("problems", []):
            print(f"note: {line}")
        return 0
    headers = {"Authorization": f"Bearer {_client_token(args)}"}
    root = Path(args.download).resolve()  # noqa: ASYNC240 - a CLI: nothing else runs on its loop
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=120)) as session:
        for f in manifest["files"]:
            target = (root / f["name"]).resolve()
            if not target.is_relative_to(root):
                return _fail(f"refusing artifact name {f['name']!r}: it leaves {root}")
            target.parent.mkdir(parents=True, exist_ok=True)
            url = args.url.rstrip("/") + f"/api/v1/jobs/{args.job_id}/artifacts/{quote(f['name'])}"
            digest = hashlib.sha256()
            tmp = target.with_name(f".{target.name}.part")
            async with session.get(url, headers=headers) as resp:
                if resp.status != 200:
                    return _fail(f"{resp.status} downloading {f['name']}")
                with tmp.open("wb") as out:
                    async for chunk in resp.content.iter_chunked(1024 * 1024):
                        digest.update(chunk)
                        out.write(chunk)
            if digest.hexdigest() != f["sha256"]:
                tmp.unlink()
                return _fail(f"{f['name']}: sha256 {digest.hexdigest()} is not the manifest's {f['sha256']}")
            tmp.replace(target)
            print(f"{target}  {f['sha256']}")
    return 0


async def _engines(args: argparse.Namespace) -> int:
    if args.engines_cmd == "list":
        status, body = await _request(args, "GET", "/api/v1/engines")
    else:
        status, body = await _request(args, "POST", f"/api/v1/engines/{quote(args.engine)}/{args.engines_cmd}")
    if status >= 400:
        return _fail(f"{status}: {body.get('error', body)}")
    if getattr(args, "json", False):
        print(json.dumps(body, indent=2))
        return 0
    print(f"{'ENGINE':16} {'STATE':10} {'CONTAINERS':>10}  URL")
    for e in body["engines"]:
        print(f"{e['name']:16} {e['state']:10} {e['containers']:>10}  {e['url']}")
    return 0


async def _runners(args: argparse.Namespace) -> int:
    query = f"?source={args.source}" if args.source else ""
    status, body = await _request(args, "GET", "/api/v1/runners" + query)
    if status >= 400:
        return _fail(f"{status}: {body.get('error', body)}")
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    print(f"{'RUNNER JOB':28} {'STATUS':10} {'POOL':12} {'ASKED BY':>12} {'RAN':>12} {'CONCLUSION':10} {'CREATED':19}")
    for r in body["runners"]:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"]))
        print(
            f"{r['job_id']:28} {r['status'] or '-':10} {r['pool'] or '-':12} {r['trigger_job_id']:>12} "
            f"{r['ran_job_id'] or '-':>12} {r['conclusion'] or '-':10} {created:19}"
        )
    return 0


async def _follow_logs(args: argparse.Namespace) -> int:
    """Prints the log; with -f follows it live and reconnects from the last byte received after a drop."""
    offset = 0
    headers = {"Authorization": f"Bearer {_client_token(args)}"}
    base = args.url.rstrip("/") + f"/api/v1/jobs/{args.job_id}/logs"
    out = sys.stdout.buffer
    failures = 0
    while True:
        params = {"offset": str(offset), "follow": "true" if args.follow else "false"}
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)) as session,
                session.get(base, params=params, headers=headers) as resp,
            ):
                if resp.status >= 400:
                    body = await resp.json(content_type=None)
                    return _fail(f"{resp.status}: {body.get('error', body)}")
                async for chunk in resp.content.iter_any():
                    out.write(chunk)
                    out.flush()
                    offset += len(chunk)
                    failures = 0
            return 0
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            if not args.follow:
                return _fail(f"connection failed: {exc}")
            failures += 1
            if failures > 30:
                return _fail("gave up reconnecting after 30 attempts")
            await asyncio.sleep(min(1.0 * failures, 5.0))


async def _send_webhook(args: argparse.Namespace, body: bytes, secret: bytes) -> int:
    from orchestrator.intake.signatures import sign

    msg_id = args.delivery_id or f"msg_{secrets.token_hex(8)}"
    headers = sign(args.scheme, secret, body, msg_id=msg_id, timestamp=int(time.time()))
    headers["Content-Type"] = "application/json"
    url = args.url.rstrip("/") + f"/webhooks/{args.source}"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
        session.post(url, data=body, headers=headers) as resp,
    ):
        print(f"{resp.status} {await resp.text()}")
        return 0 if resp.status < 300 else 1


# -- parser ------------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orchestrator", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    serve = sub.add_parser("serve", help="run the controller")
    serve.add_argument("--config", "-c", required=True, type=Path)
    serve.add_argument("--drain-timeout", type=float, default=0.0, help="seconds running jobs may finish on SIGTERM")

    cfg = sub.add_parser("config", help="configuration tools").add_subparsers(dest="config_cmd", required=True)
    check = cfg.add_parser("check", help="validate a config file; exit 2 when invalid")
    check.add_argument("file", type=Path)

    tok = sub.add_parser("token", help="API tokens").add_subparsers(dest="token_cmd", required=True)
    new = tok.add_parser("new", help="generate a token and the config entry holding its hash")
    new.add_argument("--name", required=True)
    new.add_argument("--role", choices=["viewer", "operator", "admin", "approver", "auditor"], default="viewer")
    new.add_argument("--expires-days", type=int, help="the entry gets an expiry this many days from now")
    tl = tok.add_parser("list", help="configured tokens: scope, expiry, last use; exit 1 if one needs attention")
    tl.add_argument("--config", "-c", type=Path, required=True)
    tl.add_argument("--json", action="store_true")

    jobs = sub.add_parser("jobs", help="inspect and steer jobs through the API")
    jobs.add_argument("--url", default=os.environ.get("ORCHESTRATOR_URL", DEFAULT_URL))
    jobs.add_argument("--token-file", help="file holding the API bearer token (default: $ORCHESTRATOR_TOKEN)")
    jsub = jobs.add_subparsers(dest="jobs_cmd", required=True)
    jl = jsub.add_parser("list")
    jl.add_argument("--status")
    jl.add_argument("--pool")
    jl.add_argument("--json", action="store_true")
    for name in ("show", "cancel"):
        jsub.add_parser(name).add_argument("job_id")
    jlog = jsub.add_parser("logs")
    jlog.add_argument("job_id")
    jlog.add_argument("-f", "--follow", action="store_true")
    jart = jsub.add_parser("artifacts", help="a job's artifacts (name, size, sha256); --download DIR fetches them")
    jart.add_argument("job_id")
    jart.add_argument("--download", metavar="DIR", help="write every artifact under DIR, sha256 checked")
    jart.add_argument("--json", action="store_true")

    engines = sub.add_parser("engines", help="the Docker engines jobs run on ([engines]) through the API")
    engines.add_argument("--url", default=os.environ.get("ORCHESTRATOR_URL", DEFAULT_URL))
    engines.add_argument("--token-file", help="file holding the API bearer token (default: $ORCHESTRATOR_TOKEN)")
    esub = engines.add_subparsers(dest="engines_cmd", required=True)
    esub.add_parser("list").add_argument("--json", action="store_true")
    for name, what in (("drain", "no new jobs on the engine; running ones finish"), ("undrain", "new jobs again")):
        esub.add_parser(name, help=what).add_argument("engine")

    runners = sub.add_parser("runners", help="forge runners (GitHub, Gitea) through the API")
    runners.add_argument("--url", default=os.environ.get("ORCHESTRATOR_URL", DEFAULT_URL))
    runners.add_argument("--token-file", help="file holding the API bearer token (default: $ORCHESTRATOR_TOKEN)")
    rsub = runners.add_subparsers(dest="runners_cmd", required=True)
    rl = rsub.add_parser("list")
    rl.add_argument("--source")
    rl.add_argument("--json", action="store_true")

    audit = sub.add_parser("audit", help="the tamper-evident audit trail").add_subparsers(
        dest="audit_cmd", required=True
    )
    av = audit.add_parser("verify", help="check every record's signature and the hash chain; exit 1 if tampered")
    av.add_argument("file", nargs="?", type=Path, help="default: <data_dir>/audit.jsonl of --config")
    av.add_argument("--config", "-c", type=Path, help="controller config, to find the data directory")
    av.add_argument("--pubkey", type=Path, help="PEM public key (default: audit.pub next to the file)")
    av.add_argument("--expect-head", help="a head hash anchored earlier: detects a truncated trail")
    av.add_argument("--expect-seq", type=int, help="the trail must reach at least this record")
    av.add_argument("--expect-prev", help="verify a slice (audit export): the hash its first record's prev must be")
    times_help = "RFC 3339 (2026-12-07T10:00:00Z) or a date (2026-12-07, UTC)"
    asr = audit.add_parser("search", help="find records by actor, job, action, outcome and time (oldest first)")
    asr.add_argument("file", nargs="?", type=Path, help="default: <data_dir>/audit.jsonl of --config")
    asr.add_argument("--config", "-c", type=Path, help="controller config, to find the data directory")
    asr.add_argument("--actor", help='an API token or principal name, a webhook source, or "controller"')
    asr.add_argument("--job", "--target", dest="target", help="the record's target: a job id, a route, ...")
    asr.add_argument("--action", help="exact, or a prefix ending in .* (api.*)")
    asr.add_argument("--outcome")
    asr.add_argument("--since", help=f"inclusive; {times_help}")
    asr.add_argument("--until", help=f"exclusive; {times_help}")
    asr.add_argument("--limit", type=int, default=100, help="records per page, 1..1000 (default 100)")
    asr.add_argument("--after", type=int, metavar="SEQ", help="resume after this seq (the cursor printed on stderr)")
    asr.add_argument("--json", action="store_true", help='JSON Lines: {"hash": ..., "record": ...}')
    aex = audit.add_parser("export", help="write a contiguous slice that still verifies (audit verify --expect-prev)")
    aex.add_argument("file", nargs="?", type=Path, help="default: <data_dir>/audit.jsonl of --config")
    aex.add_argument("--config", "-c", type=Path, help="controller config, to find the data directory")
    aex.add_argument("--since", help=f"inclusive; {times_help}")
    aex.add_argument("--until", help=f"exclusive; {times_help}")
    aex.add_argument("--from-seq", type=int, metavar="N")
    aex.add_argument("--to-seq", type=int, metavar="M", help="extended to the next signed record")
    aex.add_argument("--out", type=Path, required=True, help="written atomically, mode 0600")

    att = sub.add_parser("attest", help="signed job attestations").add_subparsers(dest="attest_cmd", required=True)
    atv = att.add_parser("verify", help="verify a job's DSSE attestation, e.g. before a deploy")
    atv.add_argument("file", type=Path)
    atv.add_argument("--pubkey", type=Path, required=True)
    atv.add_argument("--expect-sha", help="the commit the deploy is for")
    atv.add_argument("--expect-repository")
    atv.add_argument("--allow-failed", action="store_true", help="accept an attested job that did not succeed")
    atv.add_argument("--expect-ref", help="the ref the job must have built")
    atv.add_argument("--expect-source", help="the webhook source that must have sent the job")
    atv.add_argument(
        "--require-checkout",
        action="store_true",
        help="the controller must have fetched and verified the commit itself",
    )
    atv.add_argument("--artifact", type=Path, help="a file whose sha256 must be a subject of the attestation")
    atv.add_argument("--require-approval", action="store_true", help="the job must have been approved by a person")

    wh = sub.add_parser("send-webhook", help="sign and send a job spec, as a CI front-end would")
    wh.add_argument("spec", help="job spec JSON file, or - for stdin")
    wh.add_argument("--url", default=os.environ.get("ORCHESTRATOR_URL", DEFAULT_URL))
    wh.add_argument("--source", required=True)
    wh.add_argument("--scheme", required=True, choices=["hub-sha256", "gitea-sha256", "standard-webhooks"])
    wh.add_argument("--secret-file", required=True)
    wh.add_argument("--delivery-id")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "serve":
            return asyncio.run(_serve(args.config, args.drain_timeout))
        if args.cmd == "config":
            return _config_check(args.file)
        if args.cmd == "token" and args.token_cmd == "list":  # noqa: S105 (a subcommand name)
            return _token_list(args.config, args.json)
        if args.cmd == "token":
            return _token_new(args.name, args.role, args.expires_days)
        if args.cmd == "audit":
            return _audit(args)
        if args.cmd == "attest":
            return _attest_verify(args)
        if args.cmd == "jobs":
            return asyncio.run(_jobs(args))
        if args.cmd == "engines":
            return asyncio.run(_engines(args))
        if args.cmd == "runners":
            return asyncio.run(_runners(args))
        if args.cmd == "send-webhook":
            from orchestrator.intake.signatures import decode_secret

            body = Path(args.spec).read_bytes() if args.spec != "-" else sys.stdin.buffer.read()
            secret = decode_secret(args.scheme, Path(args.secret_file).read_text(encoding="utf-8"))
            return asyncio.run(_send_webhook(args, body, secret))
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (OSError, ValueError, aiohttp.ClientError) as exc:
        return _fail(str(exc))
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

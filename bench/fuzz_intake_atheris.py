"""Coverage-guided fuzzing of the webhook intake's pure core with atheris. Optional and standalone: not part of the
test suite, not a project dependency (tests/intake/test_fuzz_webhooks.py is the hypothesis fuzzer CI runs).

What it drives, in process (no HTTP, no Docker, no store), chosen by the first input byte:
  0. ``verify`` on arbitrary headers and body, for every scheme: it returns or raises SignatureError, nothing else,
     and it never accepts (the fuzzer does not know the key, so an accepted delivery is a forgery).
  1. a delivery signed with the key over an arbitrary delivery id, timestamp skew and body: it verifies exactly
     when the skew is within the tolerance, and the same signature over a body with one byte changed never does.
  2. ``parse_spec`` + ``check_admissible`` on a job spec whose fields the fuzzer replaces with arbitrary JSON
     (any type, any code points, lone surrogates included), and on raw bytes: they return or raise Refusal
     with a 4xx; a spec they accept survives what the controller does with it next (``model_dump_json`` for the
     store, ``LogStore.path`` for its log file).  Before dcd427b this found the lone-surrogate 500 (a spec the
     store could not serialise) within seconds; job ids ``.``/``..`` (refused by the log store) were the other.

Setup, kept out of the project's venv (atheris ships manylinux wheels; 3.0.0 is the newest the index here has):
    python3.11 -m venv /tmp/atheris-venv && /tmp/atheris-venv/bin/pip install atheris
    PYTHONPATH=.:.venv/lib/python3.11/site-packages /tmp/atheris-venv/bin/python bench/fuzz_intake_atheris.py \\
        -atheris_runs=200000          # or -max_total_time=60; any libFuzzer flag works; a crash writes crash-*
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import atheris

# the editable install's custom loader defeats atheris' loader override: hook the plain import path instead
with atheris.instrument_imports(include=["orchestrator"], enable_loader_override=False):
    from orchestrator.config import Config
    from orchestrator.intake.answers import REFUSALS
    from orchestrator.intake.signatures import SCHEMES, TIMESTAMP_TOLERANCE_S, SignatureError, sign, verify
    from orchestrator.jobs.admission import check_admissible, parse_spec
    from orchestrator.jobs.refusal import Refusal
    from orchestrator.logs.store import LogStore

KEY = b"atheris-fuzz-key-0123456789abcdef"
HEADER_NAMES = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "X-Hub-Signature-256",
    "X-GitHub-Delivery",
    "X-Gitea-Signature",
    "X-Forgejo-Signature",
    "X-Gitea-Delivery",
    "Content-Type",
]
FIELDS = ["version", "id", "pool", "repository", "ref", "sha", "commands", "env", "timeout_s", "secrets", "extra"]
BASE_SPEC: dict[str, Any] = {
    "version": 1,
    "id": "job-1",
    "pool": "default",
    "repository": "org/app",
    "ref": "refs/heads/main",
    "sha": "3f786850e387550fdab836ed7e6dc881de23001b",
    "commands": ["make test"],
}
_DATA = Path(tempfile.mkdtemp(prefix="atheris-intake-"))
CONFIG = Config.model_validate(
    {
        "controller_id": "atheris",
        "data_dir": str(_DATA),
        "sources": {},
        "pools": {"default": {"image": "x", "default_timeout_s": 60, "max_timeout_s": 300}},
    }
)
LOGS = LogStore(_DATA / "logs", max_bytes=1 << 20)


def fuzz_verify(fdp: atheris.FuzzedDataProvider) -> None:
    scheme = sorted(SCHEMES)[fdp.ConsumeIntInRange(0, len(SCHEMES) - 1)]
    headers: dict[str, str] = {}
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        name = HEADER_NAMES[fdp.ConsumeIntInRange(0, len(HEADER_NAMES) - 1)]
        if fdp.ConsumeBool():
            name = name.upper()
        headers[name] = fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 200))  # lone surrogates too, as aiohttp decodes
    body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096))
    try:
        delivery = verify(scheme, [KEY], headers, body, time.time())
    except SignatureError as exc:
        assert exc.reason in SignatureError.REASONS
        return
    raise AssertionError(f"forged {scheme} delivery accepted: {headers!r} {body!r} -> {delivery!r}")


def fuzz_signed(fdp: atheris.FuzzedDataProvider) -> None:
    msg_id = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(1, 100)).strip()
    skew = fdp.ConsumeIntInRange(-2 * TIMESTAMP_TOLERANCE_S, 2 * TIMESTAMP_TOLERANCE_S)
    body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096))
    if not msg_id:
        return
    now = int(time.time())
    headers = sign("standard-webhooks", KEY, body, msg_id=msg_id, timestamp=now + skew)
    try:
        delivery = verify("standard-webhooks", [KEY], headers, body, now)
    except SignatureError as exc:
        assert exc.reason == "stale_timestamp" and abs(skew) > TIMESTAMP_TOLERANCE_S, (msg_id, skew, exc)
    else:
        assert abs(skew) <= TIMESTAMP_TOLERANCE_S and delivery == msg_id, (msg_id, skew, delivery)
    if body and abs(skew) <= TIMESTAMP_TOLERANCE_S:
        index = fdp.ConsumeIntInRange(0, len(body) - 1)
        tampered = body[:index] + bytes([body[index] ^ (fdp.ConsumeIntInRange(1, 255))]) + body[index + 1 :]
        try:
            verify("standard-webhooks", [KEY], headers, tampered, now)
        except SignatureError as exc:
            assert exc.reason == "bad_signature", exc
        else:
            raise AssertionError(f"tampered body accepted: {body!r} -> {tampered!r}")
    for sig in headers["webhook-signature"].split():
        assert base64.b64decode(sig.partition(",")[2], validate=True)


def any_text(fdp: atheris.FuzzedDataProvider) -> str:
    text = fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 100))
    if text and fdp.ConsumeIntInRange(0, 7) == 0:  # a lone surrogate, as a \\udxxx escape would give
        at = fdp.ConsumeIntInRange(0, len(text))
        text = text[:at] + chr(0xD800 + fdp.ConsumeIntInRange(0, 0x7FF)) + text[at:]
    return text


def any_value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> Any:
    kind = fdp.ConsumeIntInRange(0, 10 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 64))
    if kind == 3:
        return fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else fdp.ConsumeFloat()
    if kind in (4, 5, 6):
        return any_text(fdp)
    if kind == 7:
        return [any_text(fdp) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    if kind == 8:
        return {any_text(fdp): any_text(fdp) for _ in range(fdp.ConsumeIntInRange(0, 4))}
    if kind == 9:
        return [any_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    return {any_text(fdp): any_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))}


def typed_value(fdp: atheris.FuzzedDataProvider, name: str) -> Any:
    """A value of the field's own type with hostile content, so that validation gets past the types."""
    if name == "commands":
        return [f"echo {any_text(fdp)}" for _ in range(fdp.ConsumeIntInRange(1, 3))]
    if name == "env":
        names = ["A", "GOFLAGS", "_X", "PATH", "CI_JOB_ID", "LD_PRELOAD", "ORCHESTRATOR_X"]
        return {
            names[fdp.ConsumeIntInRange(0, len(names) - 1)] if fdp.ConsumeBool() else any_text(fdp): any_text(fdp)
            for _ in range(fdp.ConsumeIntInRange(1, 3))
        }
    if name == "timeout_s":
        return fdp.ConsumeIntInRange(-10, 400)
    if name == "version":
        return fdp.ConsumeIntInRange(0, 2)
    if name == "secrets":
        return [{"path": any_text(fdp), "key": any_text(fdp), "name": any_text(fdp)}] if fdp.ConsumeBool() else []
    if name in ("id", "repository", "sha"):  # pattern-checked: mostly pattern characters
        alphabet = "abcdef0123456789./_-" if fdp.ConsumeBool() else any_text(fdp) or "x"
        size = fdp.ConsumeIntInRange(1, 130)
        return "".join(alphabet[fdp.ConsumeIntInRange(0, len(alphabet) - 1)] for _ in range(size))
    return BASE_SPEC.get(name, "") + any_text(fdp)


def fuzz_spec(fdp: atheris.FuzzedDataProvider) -> None:
    if fdp.ConsumeBool():
        body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8192))
    else:
        spec = dict(BASE_SPEC)
        for _ in range(fdp.ConsumeIntInRange(1, 4)):
            name = FIELDS[fdp.ConsumeIntInRange(0, len(FIELDS) - 1)]
            roll = fdp.ConsumeIntInRange(0, 5)
            if roll == 0:
                spec.pop(name, None)
            elif roll <= 2:
                spec[name] = any_value(fdp)
            else:
                spec[name] = typed_value(fdp, name)
        body = json.dumps(spec, allow_nan=True).encode()  # ensure_ascii: lone surrogates travel as \\udxxx escapes
    try:
        spec_obj = parse_spec(body)
        timeout = check_admissible(spec_obj, CONFIG, credentials_configured=False)
    except Refusal as rej:
        assert 400 <= REFUSALS[rej.reason].status < 500 and rej.reason, rej
        return
    assert 1 <= timeout <= CONFIG.pools["default"].max_timeout_s
    spec_obj.model_dump_json()  # what the store writes
    LOGS.path(spec_obj.id)  # where its log goes


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    [fuzz_verify, fuzz_signed, fuzz_spec][fdp.ConsumeIntInRange(0, 2)](fdp)


def main() -> None:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

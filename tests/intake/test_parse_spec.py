"""`parse_spec` takes pydantic's JSON parser first and falls back to the standard library's parser for what that
one refuses; these tests hold the two paths to the same answers (status, reason, fields named), so the fast path
cannot change what senders get. Only the wording of a field's message may differ: the JSON parser speaks of
"an object" and "a valid array" where Python validation says "a valid dictionary" and "a valid list"."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz_webhooks import DEEP, SHAPES, make_hostile, nesting_depth

from orchestrator.intake.answers import REFUSALS
from orchestrator.intake.webhooks import _queued
from orchestrator.jobs.admission import _parse_spec_slowly, parse_spec
from orchestrator.jobs.refusal import Refusal
from orchestrator.jobs.spec import JOB_ID_PATTERN, JobSpec
from orchestrator.jobs.states import JobState, new_job


def outcome(parse: object, body: bytes) -> tuple[object, ...]:
    try:
        spec = parse(body)  # type: ignore[operator]
    except Refusal as rej:
        fields = [f["field"] for f in rej.fields or []]
        status = REFUSALS[rej.reason].status
        return ("rejected", status, rej.reason, rej.message if status == 400 else None, fields)
    assert isinstance(spec, JobSpec)
    return ("ok", spec)


def test_fast_and_slow_parsing_agree_on_hostile_bodies() -> None:
    seeds = random.Random(20261129)
    checked = 0
    skipped = 0
    for shape in range(len(SHAPES)):
        for _ in range(800):
            case = make_hostile(shape, seeds.randint(1, 4), seeds.randint(0, 3), 0, None, seeds.randrange(2**32))
            if nesting_depth(case.body) > DEEP:
                skipped += 1
                continue  # "too deep" depends on how much stack the caller has used; both answers are fine there
            assert outcome(parse_spec, case.body) == outcome(_parse_spec_slowly, case.body), case.what
            checked += 1
    assert checked + skipped == 800 * len(SHAPES) and skipped < 800


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "a", "pool": "default", "commands": ["x"], "timeout_s": ' + b"9" * 4301 + b"}",
        b'{"id": "a", "pool": "default", "commands": ["x"], "timeout_s": NaN}',
        b'{"id": "a\\ud800", "pool": "default", "commands": ["x"]}',
        b'{"id": "a", "id": "b", "pool": "default", "commands": ["x"]}',
        json.dumps({"version": 1, "id": "a", "pool": "default", "commands": ["true"]}).encode("utf-16"),
        b"\xef\xbb\xbf{}",
        b"[1]",
        b"",
        b"[" * 5000 + b"]" * 5000,
        b'{"version": 1, "id": "a", "pool": "default", "commands": ["true"]} x',
    ],
)
def test_fast_and_slow_parsing_agree_on_edge_cases(body: bytes) -> None:
    assert outcome(parse_spec, body) == outcome(_parse_spec_slowly, body)


# --- the 202 body is built without a JSON encoder ------------------------------------------------------------


@given(job_id=st.from_regex(JOB_ID_PATTERN, fullmatch=True), state=st.sampled_from(list(JobState)))
def test_queued_body_is_exactly_what_json_dumps_gives(job_id: str, state: JobState) -> None:
    if job_id in {".", ".."}:
        return
    spec = JobSpec.model_validate(
        {"id": job_id, "pool": "p", "repository": "r", "ref": "main", "sha": "abcdef0", "commands": ["true"]}
    )
    job = dataclasses.replace(new_job(spec, source="s", controller_id="c", timeout_s=1, now=1.0), state=state)
    response = _queued(job).response()
    assert response.status == 202
    assert response.content_type == "application/json" and response.charset == "utf-8"
    assert response.body == json.dumps({"job_id": job_id, "status": state.value}).encode()


# --- duplicate keys: a signed body must not mean different things to different parsers ----------------------

SPEC_TEXT = '"version": 1, "id": "a", "pool": "default", "repository": "r", "ref": "main", "sha": "abcdef0"'


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('{"id": "a", ' + SPEC_TEXT + ', "commands": ["true"]}', "id"),
        ("{" + SPEC_TEXT + ', "commands": ["true"], "pool": "gpu"}', "pool"),
        ("{" + SPEC_TEXT + ', "commands": ["true"], "env": {"A": "1", "B": "2", "A": "3"}}', "A"),
        (
            "{"
            + SPEC_TEXT
            + ', "commands": ["true"], "secrets": [{"path": "p", "key": "k", "name": "N", "key": "x"}]}',
            "key",
        ),
        ("{" + SPEC_TEXT + ', "commands": ["true"], "x": [{"deep": {"z": 1, "z": 2}}]}', "z"),
        ('[{"a": 1, "a": 2}]', "a"),
        ('{"\\u0069d": "b", ' + SPEC_TEXT + ', "commands": ["true"]}', "id"),  # the same key, escaped
    ],
)
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-8-sig"])
def test_a_key_twice_in_one_object_is_refused_on_both_paths(text: str, key: str, encoding: str) -> None:
    body = text.encode(encoding)
    for parse in (parse_spec, _parse_spec_slowly):
        with pytest.raises(Refusal) as caught:
            parse(body)
        assert (REFUSALS[caught.value.reason].status, caught.value.reason) == (400, "duplicate_key")
        assert f"{key!r} twice" in caught.value.message


def test_the_same_key_in_different_objects_is_fine() -> None:
    body = (
        "{" + SPEC_TEXT + ', "commands": ["true"], "secrets": ['
        '{"path": "p", "key": "k", "name": "A"}, {"path": "p", "key": "k", "name": "B"}]}'
    ).encode()
    assert [s.name for s in parse_spec(body).secrets] == ["A", "B"]


@given(st.dictionaries(st.text(max_size=8), st.integers(), min_size=1, max_size=6), st.data())
def test_any_repeated_key_is_found(obj: dict[str, int], data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(obj)))
    pairs = [json.dumps(k) + ": " + json.dumps(v) for k, v in obj.items()]
    pairs.insert(data.draw(st.integers(0, len(pairs))), json.dumps(key) + ": 0")
    with pytest.raises(Refusal) as caught:
        parse_spec(("{" + ", ".join(pairs) + "}").encode())
    assert caught.value.reason == "duplicate_key"


@pytest.mark.parametrize("text", ['{"a": 1, "a": 2} x', '{"a": 1, "a": 2, "b": }', '[{"a": 1, "a": 2}, NaX]'])
def test_text_that_is_not_json_is_reported_as_that_even_with_a_key_twice(text: str) -> None:
    for parse in (parse_spec, _parse_spec_slowly):
        with pytest.raises(Refusal) as caught:
            parse(text.encode())
        assert (REFUSALS[caught.value.reason].status, caught.value.reason) == (400, "invalid_json")

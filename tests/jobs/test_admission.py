"""Admission without HTTP: a verified body's spec checked against its pool. Each refusal is a reason (and a
message, and the fields at fault), never a status: the webhook edge's table maps it (tests/intake/test_accept.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import Config
from orchestrator.jobs.admission import check_admissible, parse_spec
from orchestrator.jobs.refusal import Refusal


def _config(tmp_path: Path) -> Config:
    pool = {"image": "runner:test", "default_timeout_s": 60, "max_timeout_s": 300}
    token = {"POOL_TOKEN": {"file": str(tmp_path / "token")}}
    return Config.model_validate(
        {
            "controller_id": "unit",
            "data_dir": str(tmp_path),
            "pools": {"default": pool, "gpu": {**pool, "secrets": token}},
        }
    )


def _spec(**overrides: Any) -> bytes:
    spec = {"id": "j1", "pool": "default", "repository": "r", "ref": "main", "sha": "abcdef0", "commands": ["true"]}
    return json.dumps({**spec, **overrides}).encode()


def test_the_effective_timeout_is_the_spec_s_or_the_pool_default(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert check_admissible(parse_spec(_spec()), config, credentials_configured=False) == 60
    assert check_admissible(parse_spec(_spec(timeout_s=300)), config, credentials_configured=False) == 300


SECRET = {"path": "ci/x", "key": "k", "name": "POOL_TOKEN"}


@pytest.mark.parametrize(
    ("spec", "credentials", "reason", "says"),
    [
        ({"pool": "elsewhere"}, False, "unknown_pool", "configured pools: default, gpu"),
        ({"secrets": [SECRET]}, False, "secrets_unavailable", "no credentials backend"),
        ({"pool": "gpu", "secrets": [SECRET]}, True, "secret_name_taken", "POOL_TOKEN"),
        ({"timeout_s": 301}, False, "timeout_too_long", "max_timeout_s 300"),
    ],
)
def test_what_the_pool_refuses(tmp_path: Path, spec: dict[str, Any], credentials: bool, reason: str, says: str) -> None:
    with pytest.raises(Refusal) as caught:
        check_admissible(parse_spec(_spec(**spec)), _config(tmp_path), credentials_configured=credentials)
    assert (caught.value.reason, caught.value.fields) == (reason, None) and says in caught.value.message


def test_the_same_secret_name_is_fine_with_a_backend_and_a_pool_that_does_not_provide_it(tmp_path: Path) -> None:
    assert check_admissible(parse_spec(_spec(secrets=[SECRET])), _config(tmp_path), credentials_configured=True) == 60


@pytest.mark.parametrize(
    ("body", "reason", "fields"),
    [
        (b"{not json", "invalid_json", None),
        (b'{"id": "a", "id": "b"}', "duplicate_key", None),
        (b"[1]", "invalid_spec", None),
        (_spec(sha="nope", commands=[]), "invalid_spec", ["sha", "commands"]),
    ],
)
def test_what_parsing_refuses(body: bytes, reason: str, fields: list[str] | None) -> None:
    with pytest.raises(Refusal) as caught:
        parse_spec(body)
    refusal = caught.value
    assert refusal.reason == reason
    assert (None if refusal.fields is None else [f["field"] for f in refusal.fields]) == fields
    assert not hasattr(refusal, "status")  # the HTTP edge decides that

"""Tests for the wire job spec (orchestrator/jobs/spec.py): pure pydantic validation, no I/O."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.jobs.spec import RESERVED_ENV, JobSpec, SecretRequest

SHA = "3f786850e387550fdab836ed7e6dc881de23001b"


def raw(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "version": 1,
        "id": "job-1",
        "pool": "default",
        "repository": "example/app",
        "ref": "refs/heads/main",
        "sha": SHA,
        "commands": ["echo hello"],
    }
    spec.update(overrides)
    return spec


def secret(**overrides: Any) -> dict[str, Any]:
    req: dict[str, Any] = {"path": "ci/app", "key": "token", "name": "APP_TOKEN"}
    req.update(overrides)
    return req


def errors_for(data: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as exc:
        JobSpec.model_validate(data)
    return [dict(e) for e in exc.value.errors()]


def locs(data: dict[str, Any]) -> set[tuple[Any, ...]]:
    return {tuple(e["loc"]) for e in errors_for(data)}


# --- a valid spec ---------------------------------------------------------------------------------


def test_valid_spec_round_trips_with_defaults() -> None:
    spec = JobSpec.model_validate(raw())
    assert spec.version == 1
    assert spec.id == "job-1"
    assert spec.pool == "default"
    assert spec.repository == "example/app"
    assert spec.ref == "refs/heads/main"
    assert spec.sha == SHA
    assert spec.commands == ["echo hello"]
    assert spec.env == {}
    assert spec.timeout_s is None
    assert spec.secrets == []
    # The JSON the store writes must validate back to an equal spec.
    assert JobSpec.model_validate_json(spec.model_dump_json()) == spec


def test_version_defaults_to_1_when_omitted() -> None:
    data = raw()
    del data["version"]
    assert JobSpec.model_validate(data).version == 1


def test_full_spec_from_json() -> None:
    body = json.dumps(
        raw(
            env={"FOO": "bar", "_x1": ""},
            timeout_s=30,
            secrets=[secret(), secret(name="DB_PASS", deliver="env", engine="generic", mount="secret")],
        )
    )
    spec = JobSpec.model_validate_json(body)
    assert spec.env == {"FOO": "bar", "_x1": ""}
    assert spec.timeout_s == 30
    assert [s.name for s in spec.secrets] == ["APP_TOKEN", "DB_PASS"]
    assert spec.secrets[1].deliver == "env"
    assert spec.secrets[1].engine == "generic"
    assert spec.secrets[1].mount == "secret"


def test_spec_is_frozen() -> None:
    spec = JobSpec.model_validate(raw())
    with pytest.raises(ValidationError):
        spec.id = "other"  # type: ignore[misc]


@pytest.mark.parametrize("missing", ["id", "pool", "repository", "ref", "sha", "commands"])
def test_required_fields(missing: str) -> None:
    data = raw()
    del data[missing]
    errs = errors_for(data)
    assert [(tuple(e["loc"]), e["type"]) for e in errs] == [((missing,), "missing")]


# --- id ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("job_id", ["a", "A-b_c.d", "x" * 128, "-leading-dash", ".dot", "_", "0123"])
def test_valid_ids(job_id: str) -> None:
    assert JobSpec.model_validate(raw(id=job_id)).id == job_id


@pytest.mark.parametrize(
    "job_id",
    [
        "",
        "x" * 129,
        "a/b",
        "../etc",
        "a b",
        " a",
        "a\n",
        "a\t",
        "jöb",
        "job-\u0661",  # Arabic-Indic digit one: a "digit" to str.isdigit but not ASCII
        "jobé",
        "a:b",
        "a\x00",
    ],
)
def test_invalid_ids(job_id: str) -> None:
    assert locs(raw(id=job_id)) == {("id",)}


def test_id_must_be_string() -> None:
    assert locs(raw(id=123)) == {("id",)}


# --- version and extra fields ---------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 2, -1, "1", "2", 1.5, None])
def test_version_other_than_1_rejected(version: object) -> None:
    errs = errors_for(raw(version=version))
    assert [tuple(e["loc"]) for e in errs] == [("version",)]


def test_version_string_rejected_in_json_too() -> None:
    with pytest.raises(ValidationError) as exc:
        JobSpec.model_validate_json(json.dumps(raw(version="1")))
    assert [tuple(e["loc"]) for e in exc.value.errors()] == [("version",)]


def test_extra_top_level_field_rejected() -> None:
    errs = errors_for(raw(image="alpine"))
    assert [(tuple(e["loc"]), e["type"]) for e in errs] == [(("image",), "extra_forbidden")]


def test_extra_field_in_secret_rejected() -> None:
    errs = errors_for(raw(secrets=[secret(value="literal")]))
    assert [(tuple(e["loc"]), e["type"]) for e in errs] == [(("secrets", 0, "value"), "extra_forbidden")]


# --- commands ---------------------------------------------------------------------------------------


def test_empty_commands_rejected() -> None:
    assert locs(raw(commands=[])) == {("commands",)}


@pytest.mark.parametrize("blank", ["", " ", "\t", "\n", "  \n\t "])
def test_blank_command_rejected(blank: str) -> None:
    errs = errors_for(raw(commands=["echo ok", blank]))
    assert len(errs) == 1
    assert errs[0]["loc"] == ("commands",)
    assert "commands[1] is empty" in errs[0]["msg"]


def test_nul_in_command_rejected() -> None:
    errs = errors_for(raw(commands=["echo a\x00b"]))
    assert len(errs) == 1
    assert "commands[0] contains a NUL byte" in errs[0]["msg"]


def test_command_size_limit() -> None:
    JobSpec.model_validate(raw(commands=["x" * (64 * 1024)]))
    errs = errors_for(raw(commands=["x" * (64 * 1024 + 1)]))
    assert "commands[0] is longer than 64 KiB" in errs[0]["msg"]


def test_command_count_limit() -> None:
    assert len(JobSpec.model_validate(raw(commands=["true"] * 500)).commands) == 500
    assert locs(raw(commands=["true"] * 501)) == {("commands",)}


def test_commands_kept_verbatim() -> None:
    cmds = ["  echo 'a b'  ", "cd sub && make\nmake test", "echo $(whoami) `id`"]
    assert JobSpec.model_validate(raw(commands=cmds)).commands == cmds


# --- env --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RESERVED_ENV))
def test_reserved_env_names_rejected(name: str) -> None:
    errs = errors_for(raw(env={name: "x"}))
    assert len(errs) == 1
    assert errs[0]["loc"] == ("env",)
    assert "reserved by the runner" in errs[0]["msg"]


def test_reserved_env_set_is_what_the_docs_promise() -> None:
    assert {
        *("HOME", "PATH", "USER", "PWD", "SHELL", "IFS", "ENV", "BASH_ENV", "LD_PRELOAD", "LD_LIBRARY_PATH"),
        *("CI", "CI_REPOSITORY", "CI_REF", "CI_SHA", "CI_POOL"),
    } == RESERVED_ENV


@pytest.mark.parametrize("name", ["ORCHESTRATOR_X", "ORCHESTRATOR_", "CI_JOB_X", "CI_JOB_ID", "CI_JOB_"])
def test_reserved_env_prefixes_rejected(name: str) -> None:
    errs = errors_for(raw(env={name: "x"}))
    assert "reserved by the runner" in errs[0]["msg"]


@pytest.mark.parametrize("name", ["home", "Path", "CIX", "CI_JOBS", "CI_JOBX", "ORCHESTRATORX", "MY_ORCHESTRATOR_X"])
def test_names_near_reserved_are_allowed(name: str) -> None:
    assert JobSpec.model_validate(raw(env={name: "v"})).env == {name: "v"}


@pytest.mark.parametrize("name", ["", "1ABC", "A-B", "A B", "A.B", "A=B", "É", "A\n", "x" * 129])
def test_invalid_env_names_rejected(name: str) -> None:
    errs = errors_for(raw(env={name: "x"}))
    assert len(errs) == 1
    assert "is not a valid shell variable name" in errs[0]["msg"]


def test_env_name_length_limit() -> None:
    assert JobSpec.model_validate(raw(env={"A" * 128: "v"})).env == {"A" * 128: "v"}


def test_env_value_limits() -> None:
    ok = JobSpec.model_validate(raw(env={"V": "x" * (32 * 1024), "E": "", "Q": "'\"$`\n"}))
    assert ok.env["Q"] == "'\"$`\n"
    for bad in ("a\x00b", "x" * (32 * 1024 + 1)):
        errs = errors_for(raw(env={"V": bad}))
        assert "has a NUL byte or is longer than 32 KiB" in errs[0]["msg"]


def test_env_count_limit() -> None:
    JobSpec.model_validate(raw(env={f"V{i}": "x" for i in range(200)}))
    errs = errors_for(raw(env={f"V{i}": "x" for i in range(201)}))
    assert "at most 200 environment variables" in errs[0]["msg"]


# --- secrets ----------------------------------------------------------------------------------------


def test_secret_defaults() -> None:
    req = JobSpec.model_validate(raw(secrets=[secret()])).secrets[0]
    assert req.path == "ci/app"
    assert req.key == "token"
    assert req.name == "APP_TOKEN"
    assert req.deliver == "file"
    assert req.engine == "kv2"
    assert req.mount is None


@pytest.mark.parametrize("deliver", ["file", "env"])
def test_secret_deliver_values(deliver: str) -> None:
    assert JobSpec.model_validate(raw(secrets=[secret(deliver=deliver)])).secrets[0].deliver == deliver


@pytest.mark.parametrize("deliver", ["stdin", "FILE", "", "arg"])
def test_secret_deliver_other_values_rejected(deliver: str) -> None:
    assert locs(raw(secrets=[secret(deliver=deliver)])) == {("secrets", 0, "deliver")}


@pytest.mark.parametrize("engine", ["kv1", "KV2", "database", ""])
def test_secret_unknown_engine_rejected(engine: str) -> None:
    assert locs(raw(secrets=[secret(engine=engine)])) == {("secrets", 0, "engine")}


@pytest.mark.parametrize(
    ("path", "stored"),
    [
        ("ci/app", "ci/app"),
        ("/ci/app", "ci/app"),
        ("ci/app/", "ci/app"),
        ("/ci/app/", "ci/app"),
        ("//ci/app//", "ci/app"),
        ("a", "a"),
        ("a.b/..c/d..", "a.b/..c/d.."),  # dots inside a segment are fine
        ("team_1/app-2/x.y", "team_1/app-2/x.y"),
    ],
)
def test_secret_path_normalised(path: str, stored: str) -> None:
    assert SecretRequest(path=path, key="k", name="N").path == stored


@pytest.mark.parametrize(
    "path",
    ["..", ".", "../x", "x/..", "a/../b", "a/./b", "./a", "a/.", "a//b", "/", "//", "a/b//c"],
)
def test_secret_path_traversal_and_empty_segments_rejected(path: str) -> None:
    with pytest.raises(ValidationError) as exc:
        SecretRequest(path=path, key="k", name="N")
    errs = exc.value.errors()
    assert [e["loc"] for e in errs] == [("path",)]
    assert "path segments must not be empty, '.' or '..'" in errs[0]["msg"]


@pytest.mark.parametrize("path", ["", "a b", "a\\b", "a:b", "a?b", "a%2e%2e", "ü", "a\n"])
def test_secret_path_charset(path: str) -> None:
    with pytest.raises(ValidationError) as exc:
        SecretRequest(path=path, key="k", name="N")
    assert [e["loc"] for e in exc.value.errors()] == [("path",)]


def test_secret_path_length() -> None:
    SecretRequest(path="a" * 512, key="k", name="N")
    with pytest.raises(ValidationError):
        SecretRequest(path="a" * 513, key="k", name="N")


def test_secret_key_length() -> None:
    SecretRequest(path="p", key="k" * 256, name="N")
    for key in ("", "k" * 257):
        with pytest.raises(ValidationError) as exc:
            SecretRequest(path="p", key=key, name="N")
        assert [e["loc"] for e in exc.value.errors()] == [("key",)]


@pytest.mark.parametrize("name", ["", "../x", "a/b", "1A", "A-B", "A B", ".env", "x" * 129])
def test_secret_name_must_be_a_shell_name(name: str) -> None:
    # The name becomes a file under /run/secrets: it must never carry a path separator or '..'.
    with pytest.raises(ValidationError) as exc:
        SecretRequest(path="p", key="k", name=name)
    assert [e["loc"] for e in exc.value.errors()] == [("name",)]


@pytest.mark.parametrize("mount", ["a/b", "", "a b", "x/", "../x"])
def test_secret_mount_charset(mount: str) -> None:
    with pytest.raises(ValidationError) as exc:
        SecretRequest(path="p", key="k", name="N", mount=mount)
    assert [e["loc"] for e in exc.value.errors()] == [("mount",)]


def test_duplicate_secret_names_rejected() -> None:
    errs = errors_for(raw(secrets=[secret(), secret(path="other", key="k2", deliver="env")]))
    assert len(errs) == 1
    assert errs[0]["loc"] == ("secrets",)
    assert "secret name 'APP_TOKEN' is used twice" in errs[0]["msg"]


def test_distinct_secret_names_accepted() -> None:
    spec = JobSpec.model_validate(raw(secrets=[secret(name="A"), secret(name="B"), secret(name="a")]))
    assert [s.name for s in spec.secrets] == ["A", "B", "a"]


def test_secret_count_limit() -> None:
    JobSpec.model_validate(raw(secrets=[secret(name=f"S{i}") for i in range(100)]))
    assert locs(raw(secrets=[secret(name=f"S{i}") for i in range(101)])) == {("secrets",)}


@pytest.mark.parametrize("name", ["PATH", "LD_PRELOAD", "HOME", "CI_JOB_ID", "ORCHESTRATOR_X"])
def test_env_delivered_secret_cannot_use_reserved_name(name: str) -> None:
    with pytest.raises(ValidationError):
        JobSpec.model_validate(raw(secrets=[secret(name=name, deliver="env")]))


# --- ref and sha ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["refs/heads/main", "main", "v1.2.3", "refs/pull/1/merge", "feature/ü-ß", "a b"])
def test_valid_refs(ref: str) -> None:
    assert JobSpec.model_validate(raw(ref=ref)).ref == ref


@pytest.mark.parametrize("ref", ["refs/heads/a:b", ":", "main:", "a\nb", "a\tb", "a\x00b", "a\x1bb", ""])
def test_invalid_refs(ref: str) -> None:
    assert locs(raw(ref=ref)) == {("ref",)}


def test_ref_colon_message() -> None:
    errs = errors_for(raw(ref="refs/heads/x:y"))
    assert "contain no ':'" in errs[0]["msg"]


def test_ref_length() -> None:
    JobSpec.model_validate(raw(ref="r" * 256))
    assert locs(raw(ref="r" * 257)) == {("ref",)}


@pytest.mark.parametrize("sha", ["abcdef1", "ABCDEF1", "0" * 40, "f" * 64, SHA.upper()])
def test_valid_shas(sha: str) -> None:
    assert JobSpec.model_validate(raw(sha=sha)).sha == sha


@pytest.mark.parametrize("sha", ["abcdef", "0" * 65, "ghijklm", "abcdef1\n", " abcdef1", "abc def1", "", "abcdef1g"])
def test_invalid_shas(sha: str) -> None:
    assert locs(raw(sha=sha)) == {("sha",)}


# --- other fields -------------------------------------------------------------------------------------


@pytest.mark.parametrize("repo", ["", "a b", "a:b", "a@b", "x" * 257])
def test_invalid_repository(repo: str) -> None:
    assert locs(raw(repository=repo)) == {("repository",)}


@pytest.mark.parametrize("pool", ["", "p" * 64])
def test_invalid_pool(pool: str) -> None:
    assert locs(raw(pool=pool)) == {("pool",)}


@pytest.mark.parametrize("timeout", [0, -1])
def test_timeout_must_be_positive(timeout: int) -> None:
    assert locs(raw(timeout_s=timeout)) == {("timeout_s",)}


def test_timeout_one_second_ok() -> None:
    assert JobSpec.model_validate(raw(timeout_s=1)).timeout_s == 1


@pytest.mark.parametrize("mount", ["..", "."])
def test_secret_mount_dot_segments_rejected(mount: str) -> None:
    with pytest.raises(ValidationError):
        SecretRequest(path="p", key="k", name="N", mount=mount)


@pytest.mark.parametrize("job_id", [".", ".."])
def test_dot_ids_are_refused_because_they_name_files(job_id: str) -> None:
    with pytest.raises(ValidationError):
        JobSpec.model_validate(raw(id=job_id))


@pytest.mark.parametrize(
    "field",
    [
        {"commands": ["echo \ud800"]},
        {"env": {"X": "a\udfffb"}},
        {"ref": "main\ud800"},
        {"secrets": [{"path": "ci/app", "key": "to\udc00ken", "name": "TOKEN"}]},
    ],
)
def test_unpaired_surrogates_are_refused(field: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="unpaired surrogate") as caught:
        JobSpec.model_validate(raw(**field))
    assert caught.value.errors()[0]["loc"] == ()  # checked before any field, like the JSON parser does


def test_unpaired_surrogates_are_refused_in_a_secret_request_too() -> None:
    with pytest.raises(ValidationError, match=r"body\.key contains an unpaired surrogate"):
        SecretRequest.model_validate({"path": "ci/app", "key": "to\udc00ken", "name": "TOKEN"})


def test_json_bodies_are_not_walked_in_python() -> None:
    """The surrogate check must stay off the JSON path: there pydantic's parser refuses them, and a Python-side
    check (a `before` validator) would make pydantic build every body as Python objects first."""
    assert JobSpec.__pydantic_decorators__.model_validators == {}
    assert "__init__" not in vars(JobSpec) and "__init__" not in vars(SecretRequest)
    with pytest.raises(ValidationError, match=r"json_invalid|Invalid JSON|surrogate"):
        JobSpec.model_validate_json(json.dumps(raw(ref="main\ud800")))

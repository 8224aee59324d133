"""`[sources.NAME.callbacks]`, `[sources.NAME.commit_status]` and `[callbacks]` as the config loader checks them:
secret and token files (readable, valid, chmod 600, never quoted), relative paths, URLs."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from orchestrator.config import ConfigError, load_config

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()


def write(tmp_path: Path, extra: str, *, secret: str = SECRET, mode: int = 0o600, token_mode: int = 0o600) -> Path:
    (tmp_path / "hook.secret").write_text(SECRET)
    (tmp_path / "hook.secret").chmod(0o600)
    (tmp_path / "cb.secret").write_text(secret)
    (tmp_path / "cb.secret").chmod(mode)
    (tmp_path / "status.token").write_text("tok_abc\n")
    (tmp_path / "status.token").chmod(token_mode)
    path = tmp_path / "orchestrator.toml"
    path.write_text(
        f"""
controller_id = "ctl"
data_dir = "data"
[sources.ci]
scheme = "standard-webhooks"
secret_file = "hook.secret"
{extra}
[pools.default]
image = "alpine:3"
"""
    )
    return path


CALLBACKS = """
[sources.ci.callbacks]
url = "https://hooks.example.com/ci"
secret_file = "cb.secret"
allowed_url_prefixes = ["https://hooks.example.com/jobs/"]
[sources.ci.commit_status]
kind = "gitlab"
api_url = "https://gitlab.example.com"
token_file = "status.token"
"""


def test_relative_files_resolve_and_defaults_apply(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, CALLBACKS + "[callbacks]\nretry_for_s = 60\n"))
    source = config.sources["ci"]
    assert source.callbacks is not None and source.callbacks.secret_file == tmp_path / "cb.secret"
    assert source.commit_status is not None and source.commit_status.token_file == tmp_path / "status.token"
    assert config.callbacks.retry_for_s == 60 and config.callbacks.backoff_max_s == 300


def test_files_readable_by_others_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(write(tmp_path, CALLBACKS, mode=0o644, token_mode=0o640))
    assert [p.split(":")[0] for p in refused.value.problems] == [
        "sources.ci.callbacks.secret_file",
        "sources.ci.commit_status.token_file",
    ]
    assert all("chmod 600" in p for p in refused.value.problems)


def test_a_secret_that_is_not_whsec_base64_is_refused_without_quoting_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(write(tmp_path, CALLBACKS, secret="whsec_not*base64*hunter2"))
    assert "whsec_" in str(refused.value) and "hunter2" not in str(refused.value)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (CALLBACKS.replace("https://hooks.example.com/ci", "https://u:p@hooks.example.com/ci"), "user info"),
        (CALLBACKS.replace('["https://hooks.example.com/jobs/"]', '["https://h/jobs/?x=1"]'), "query"),
        (CALLBACKS.replace('api_url = "https://gitlab.example.com"\n', ""), "needs api_url"),
        (CALLBACKS.replace('kind = "gitlab"', 'kind = "bitbucket"'), "kind"),
    ],
)
def test_invalid_settings(tmp_path: Path, extra: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, extra))

"""The pure parts of the checkout: repository names, remote templates, the sha rule, CheckoutConfig, git's
environment (orchestrator/checkout/remote.py, git.py; orchestrator/config.py CheckoutConfig)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator.checkout import InvalidRepository, InvalidSha, full_sha, remote_url, validate_repository
from orchestrator.checkout.git import git_env, ssh_command
from orchestrator.checkout.remote import repository_of, resolve_relative, without_userinfo
from orchestrator.config import CheckoutConfig, ConfigError, load_config

SHA1 = "3f786850e387550fdab836ed7e6dc881de23001b"


@pytest.mark.parametrize("name", ["org/app", "a/b/c", "Org_1/app.js", "o/a-b.c_d", "x/y.git"])
def test_repository_names_accepted(name: str) -> None:
    assert validate_repository(name) == name


@pytest.mark.parametrize(
    "name",
    ["app", "org/../etc", "org/..", "-o/app", "org/-app", ".hidden/app", "org//app", "/org/app", "org/app/", "o/a b",
     "o/a%2e", "a/b/c/d/e/f/g/h/i", "org/a..b"],
)  # fmt: skip
def test_repository_names_refused(name: str) -> None:
    with pytest.raises(InvalidRepository):
        validate_repository(name)


def test_remote_url() -> None:
    assert remote_url("https://git.example/{repository}.git", "org/app") == "https://git.example/org/app.git"
    assert remote_url("ssh://git@git.example:2222/{repository}.git", "o/a") == "ssh://git@git.example:2222/o/a.git"
    assert remote_url("file:///srv/git/{repository}.git", "o/a") == "file:///srv/git/o/a.git"
    with pytest.raises(InvalidRepository):
        remote_url("https://git.example/{repository}.git", "o/../../x")


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("https://git.example/app.git", "exactly once"),
        ("https://git.example/{repository}/{repository}", "exactly once"),
        ("https://git.example/{repository}/{other}", "only placeholder"),
        ("git@git.example:{repository}.git", "scheme"),
        ("ext::sh -c {repository}", "whitespace"),
        ("ext::git-{repository}", "scheme"),
        ("ftp://git.example/{repository}", "scheme"),
        ("https://{repository}.example/x.git", "path"),
        ("https://user:pw@git.example/{repository}.git", "password"),
        ("https://user@git.example/{repository}.git", "user name"),
        ("https://git.example/{repository}.git?x=1", "query"),
        ("file://host/srv/{repository}.git", "no host"),
        ("https://git.example:99999/{repository}.git", "port"),
        ("https://git.example/{repository} .git", "whitespace"),
    ],
)
def test_remote_templates_refused(template: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        CheckoutConfig(remote=template)


def test_credentials_must_fit_the_remote(tmp_path: Path) -> None:
    key, hosts = tmp_path / "key", tmp_path / "known_hosts"
    with pytest.raises(ValidationError, match="clear text"):
        CheckoutConfig(remote="http://git.example/{repository}.git", token_file=key)
    CheckoutConfig(remote="http://127.0.0.1:8000/{repository}.git", token_file=key)  # loopback: never leaves the host
    with pytest.raises(ValidationError, match="http"):
        CheckoutConfig(remote="git://git.example/{repository}", token_file=key)
    with pytest.raises(ValidationError, match="known_hosts_file"):
        CheckoutConfig(remote="ssh://git@git.example/{repository}.git", deploy_key_file=key)
    with pytest.raises(ValidationError, match="ssh://"):
        CheckoutConfig(remote="https://git.example/{repository}.git", deploy_key_file=key, known_hosts_file=hosts)
    with pytest.raises(ValidationError, match="not both"):
        CheckoutConfig(remote="https://git.example/{repository}.git", token_file=key, deploy_key_file=key)
    cfg = CheckoutConfig(remote="ssh://git@git.example/{repository}.git", deploy_key_file=key, known_hosts_file=hosts)
    assert cfg.max_bytes == 1024**3 and cfg.submodules is False
    assert cfg.mirror_path(tmp_path / "data") == tmp_path / "data" / "checkout"


def test_full_sha_only() -> None:
    assert full_sha("o/a", SHA1.upper()) == SHA1
    assert full_sha("o/a", "a" * 64) == "a" * 64
    with pytest.raises(InvalidSha, match=r"abbreviated sha \(7 hex digits\) is never resolved"):
        full_sha("o/a", SHA1[:7])
    with pytest.raises(InvalidSha, match="not a commit id"):
        full_sha("o/a", "g" * 40)


def test_submodule_urls_map_onto_the_template() -> None:
    template = "https://git.example/{repository}.git"
    assert resolve_relative("https://git.example/org/app.git", "../lib.git") == "https://git.example/org/lib.git"
    assert resolve_relative("https://git.example/org/app.git", "../../other/lib") == "https://git.example/other/lib"
    assert repository_of(template, "https://git.example/org/lib.git") == "org/lib"
    assert repository_of(template, "https://git.example/org/lib") == "org/lib"
    assert repository_of(template, "https://evil.example/org/lib.git") is None
    assert repository_of(template, "https://git.example/org/../x.git") is None
    assert without_userinfo("https://u:pw@h/x") == "https://***@h/x"


def test_git_env_restricts_protocols_and_keeps_the_token_out_of_argv(tmp_path: Path) -> None:
    env = git_env(home=tmp_path, scheme="https", token="tok-123", token_username="x-access-token").env
    settings = {env[f"GIT_CONFIG_KEY_{n}"]: env[f"GIT_CONFIG_VALUE_{n}"] for n in range(int(env["GIT_CONFIG_COUNT"]))}
    assert settings["protocol.allow"] == "never"
    assert settings["protocol.https.allow"] == "always"
    assert "protocol.file.allow" not in settings
    assert settings["http.extraHeader"].startswith("Authorization: Basic ")
    assert env["GIT_CONFIG_NOSYSTEM"] == "1" and env["GIT_CONFIG_GLOBAL"] == "/dev/null"
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["HOME"] == str(tmp_path)
    file_env = git_env(home=tmp_path, scheme="file").env
    assert "http.extraHeader" not in file_env.values()
    assert "protocol.file.allow" in file_env.values()


def test_ssh_command_pins_key_and_host_keys(tmp_path: Path) -> None:
    command = ssh_command(tmp_path / "deploy key", tmp_path / "known_hosts")
    assert f"'{tmp_path}/deploy key'" in command
    for option in ("IdentitiesOnly=yes", "StrictHostKeyChecking=yes", f"UserKnownHostsFile={tmp_path}/known_hosts"):
        assert option in command
    env = git_env(home=tmp_path, scheme="ssh", deploy_key=tmp_path / "k", known_hosts=tmp_path / "kh").env
    assert env["GIT_SSH_COMMAND"].startswith("ssh -F /dev/null -i")


def test_load_config_checks_checkout_files(tmp_path: Path) -> None:
    token = tmp_path / "git.token"
    token.write_text("abc\n")
    token.chmod(0o644)
    secret = tmp_path / "hook.secret"
    secret.write_text("whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
    secret.chmod(0o600)
    path = tmp_path / "o.toml"
    path.write_text(
        'controller_id = "c"\ndata_dir = "data"\n[pools.default]\nimage = "x"\n'
        '[sources.s]\nscheme = "standard-webhooks"\nsecret_file = "hook.secret"\n'
        '[sources.s.checkout]\nremote = "https://git.example/{repository}.git"\ntoken_file = "git.token"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems == [
        f"sources.s.checkout.token_file: {token}: readable by group/others; run chmod 600 on it"
    ]
    token.chmod(0o600)
    checkout = load_config(path).sources["s"].checkout
    assert checkout is not None and checkout.token_file == token

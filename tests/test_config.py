"""Tests for the controller configuration (orchestrator/config.py) and the `config check` / `token new` CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
import time
import tomllib
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.config import Config, ConfigError, hash_token, load_config, parse_memory, read_source_secrets

SW_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()

MINIMAL = """
controller_id = "ctl-1"
data_dir = "data"

[pools.default]
image = "alpine:3"
"""


def write(tmp_path: Path, text: str, name: str = "orchestrator.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def secret_file(tmp_path: Path, content: str = "s3cret", name: str = "hook.secret", mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    path.chmod(mode)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert exc.value.path == str(path)
    assert str(exc.value) == f"{path}: " + "; ".join(exc.value.problems)
    return exc.value.problems


def pool_problems(tmp_path: Path, body: str) -> list[str]:
    return problems(write(tmp_path, MINIMAL + body))


# --- parse_memory / hash_token --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("512m", 536_870_912),
        ("512M", 536_870_912),
        ("2g", 2 * 1024**3),
        ("2G", 2 * 1024**3),
        ("64k", 65_536),
        ("1048576", 1_048_576),
        (" 8m ", 8 * 1024**2),
        ("0", 0),
        (123, 123),
    ],
)
def test_parse_memory(value: str | int, expected: int) -> None:
    assert parse_memory(value) == expected


@pytest.mark.parametrize("value", ["lots", "", "512mb", "1t", "-5m", "1.5g", "m", "5 m", "0x10"])
def test_parse_memory_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="memory must look like 512m, 2g or a byte count"):
        parse_memory(value)


def test_hash_token() -> None:
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hash_token("ü") == hashlib.sha256("ü".encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", hash_token(""))


# --- a valid config -------------------------------------------------------------------------------


def test_minimal_config_loads_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert isinstance(config, Config)
    assert config.controller_id == "ctl-1"
    assert config.data_dir == tmp_path.resolve() / "data"
    assert config.max_total_concurrent == 16
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8080
    assert config.storage.backend == "sqlite"
    assert config.api.tokens == []
    assert config.sources == {}
    pool = config.pools["default"]
    assert pool.image == "alpine:3"
    assert pool.user == "10001:10001"
    assert pool.memory == 512 * 1024**2
    assert pool.cpus == 1.0
    assert pool.pids == 256
    assert pool.network == "none"
    assert pool.default_timeout_s == 600
    assert pool.max_timeout_s == 3600
    assert pool.labels == {}
    assert pool.retry_on_restart is False


def test_full_config_loads(tmp_path: Path) -> None:
    hub = secret_file(tmp_path, "hub-secret\n", "hub.secret")
    sw1 = secret_file(tmp_path, SW_SECRET, "sw1.secret")
    secret_file(tmp_path, SW_SECRET, "sw2.secret", mode=0o400)
    token_hash = hash_token("t0k3n")
    text = f"""
controller_id = "ci-host-1"
data_dir = "/var/lib/runner-orchestrator"
max_total_concurrent = 4

[server]
host = "0.0.0.0"
port = 9000

[sources.github]
scheme = "hub-sha256"
secret_file = "{hub}"

[sources.front]
scheme = "standard-webhooks"
secret_files = ["{sw1}", "sw2.secret"]

[[api.tokens]]
name = "ops"
role = "operator"
sha256 = "{token_hash}"

[pools.default]
image = "runner:bookworm"
user = "1000"
memory = "2g"
cpus = 2.5
pids = 512
network = "ci-egress"
default_timeout_s = 1800
max_timeout_s = 1800
labels = {{ team = "platform" }}
"""
    config = load_config(write(tmp_path, text))
    assert config.data_dir == Path("/var/lib/runner-orchestrator"), "absolute paths stay as written"
    assert config.server.port == 9000
    assert config.sources["github"].secret_files == [hub]
    assert config.sources["front"].secret_files == [sw1, tmp_path.resolve() / "sw2.secret"]
    assert config.api.tokens[0].sha256 == token_hash
    assert config.api.tokens[0].role == "operator"
    pool = config.pools["default"]
    assert pool.user == "1000"
    assert pool.memory == 2 * 1024**3
    assert pool.network == "ci-egress"
    assert pool.labels == {"team": "platform"}


def test_relative_paths_resolve_against_config_dir_not_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "etc" / "orch"
    conf_dir.mkdir(parents=True)
    secret_file(conf_dir, "hub", "hub.secret")
    (conf_dir / "keys").mkdir()
    secret_file(conf_dir / "keys", "k2", "b.secret")
    path = write(
        conf_dir,
        MINIMAL.replace('data_dir = "data"', 'data_dir = "../state/data"')
        + '\n[sources.gh]\nscheme = "hub-sha256"\nsecret_file = "hub.secret"\n'
        + '\n[sources.gt]\nscheme = "gitea-sha256"\nsecret_files = ["hub.secret", "keys/b.secret"]\n',
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path(os.path.relpath(path, elsewhere)))
    base = conf_dir.resolve()
    assert config.data_dir == base / "../state/data"
    assert config.data_dir.resolve() == (tmp_path / "etc" / "state" / "data").resolve()
    assert config.sources["gh"].secret_files == [base / "hub.secret"]
    assert config.sources["gt"].secret_files == [base / "hub.secret", base / "keys" / "b.secret"]


def test_example_config_structure_is_valid(tmp_path: Path) -> None:
    """The shipped example may only fail on its secret files (absolute /etc paths), never on structure."""
    example = Path(__file__).resolve().parents[1] / "config" / "orchestrator.example.toml"
    if not example.exists():
        pytest.skip("no example config")
    try:
        load_config(example)
    except ConfigError as exc:
        assert exc.problems
        assert all(
            re.match(
                r"sources\.[^.]+\.(secret_files|forge\.[a-z_]+|callbacks\.secret_file|commit_status\.token_file"
                r"|checkout\.[a-z_]+): /",
                p,
            )
            for p in exc.problems
        ), exc.problems


def test_digest_is_stable_and_sensitive(tmp_path: Path) -> None:
    a = load_config(write(tmp_path, MINIMAL))
    b = load_config(write(tmp_path, MINIMAL))
    c = load_config(write(tmp_path, MINIMAL.replace("alpine:3", "alpine:4")))
    assert a.digest() == b.digest()
    assert a.digest() != c.digest()
    assert re.fullmatch(r"[0-9a-f]{64}", a.digest())


# --- invalid fields -------------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["0", "0:0", "10001:0", "0:10001", "00", "000:1"])
def test_root_user_rejected(tmp_path: Path, user: str) -> None:
    found = pool_problems(tmp_path, f'user = "{user}"\n')
    assert found == ["pools.default.user: Value error, jobs never run as root (uid/gid 0)"]


@pytest.mark.parametrize("user", ["root", "nobody", "1000:root", "-1", "1000:", ":1000", "1000:1000:1", " 1000", "1e3"])
def test_non_numeric_user_rejected(tmp_path: Path, user: str) -> None:
    found = pool_problems(tmp_path, f'user = "{user}"\n')
    assert len(found) == 1
    assert found[0].startswith("pools.default.user: ")
    assert "numeric uid or uid:gid" in found[0]


@pytest.mark.parametrize("user", ["1", "1000", "10001:10001", "65534:65534", "1000:1"])
def test_numeric_non_root_user_accepted(tmp_path: Path, user: str) -> None:
    assert load_config(write(tmp_path, MINIMAL + f'user = "{user}"\n')).pools["default"].user == user


@pytest.mark.parametrize("network", ["host", "container:x", "container:", "container:abc123"])
def test_namespace_sharing_network_rejected(tmp_path: Path, network: str) -> None:
    found = pool_problems(tmp_path, f'network = "{network}"\n')
    assert found == [
        f"pools.default.network: Value error, network {network!r} would share a host or container namespace; "
        "not allowed"
    ]


@pytest.mark.parametrize("network", ["", "a b", "-x", "ns:abc", "a/b"])
def test_invalid_network_name_rejected(tmp_path: Path, network: str) -> None:
    found = pool_problems(tmp_path, f'network = "{network}"\n')
    assert len(found) == 1
    assert found[0].startswith("pools.default.network: ")
    assert "is not a valid Docker network name" in found[0]


@pytest.mark.parametrize("network", ["none", "bridge", "ci-egress", "net_1.a"])
def test_valid_networks(tmp_path: Path, network: str) -> None:
    assert load_config(write(tmp_path, MINIMAL + f'network = "{network}"\n')).pools["default"].network == network


def test_memory_string_parsed(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL + 'memory = "512m"\n')).pools["default"].memory == 536_870_912


def test_memory_integer_bytes(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL + "memory = 67108864\n")).pools["default"].memory == 67_108_864


@pytest.mark.parametrize("memory", ['"lots"', '"512mb"', "1.5", "true", "[1]"])
def test_bad_memory_rejected(tmp_path: Path, memory: str) -> None:
    found = pool_problems(tmp_path, f"memory = {memory}\n")
    assert len(found) == 1
    assert found[0].startswith("pools.default.memory: ")


def test_memory_lots_message(tmp_path: Path) -> None:
    found = pool_problems(tmp_path, 'memory = "lots"\n')
    assert found == ["pools.default.memory: Value error, memory must look like 512m, 2g or a byte count, got 'lots'"]


@pytest.mark.parametrize("memory", ['"5m"', '"1k"', "6291455"])
def test_memory_below_docker_minimum_rejected(tmp_path: Path, memory: str) -> None:
    found = pool_problems(tmp_path, f"memory = {memory}\n")
    assert found == ["pools.default.memory: Value error, memory must be at least 6m (Docker's minimum)"]


def test_memory_minimum_accepted(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL + 'memory = "6m"\n')).pools["default"].memory == 6 * 1024**2


def test_default_timeout_above_max_rejected(tmp_path: Path) -> None:
    found = pool_problems(tmp_path, "default_timeout_s = 3601\nmax_timeout_s = 3600\n")
    assert found == ["pools.default: Value error, default_timeout_s must not exceed max_timeout_s"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("cpus = 0\n", "cpus"),
        ("cpus = 257\n", "cpus"),
        ("pids = 15\n", "pids"),
        ("max_concurrent = 0\n", "max_concurrent"),
        ("max_queue = -1\n", "max_queue"),
        ('workspace_size = "1 g"\n', "workspace_size"),
        ('tmp_size = "1G"\n', "tmp_size"),
        ('image = ""\n', "image"),
        ("privileged = true\n", "privileged"),
        ("default_timeout_s = 0\n", "default_timeout_s"),
    ],
)
def test_pool_field_problems_are_named(tmp_path: Path, body: str, field: str) -> None:
    image = "" if field == "image" else 'image = "alpine:3"\n'
    text = 'controller_id = "ctl-1"\ndata_dir = "data"\n[pools.default]\n' + image + body
    found = problems(write(tmp_path, text))
    assert len(found) == 1, found
    assert found[0].startswith(f"pools.default.{field}: ")


def test_unknown_scheme_rejected(tmp_path: Path) -> None:
    sf = secret_file(tmp_path)
    found = problems(write(tmp_path, MINIMAL + f'\n[sources.gh]\nscheme = "github"\nsecret_file = "{sf}"\n'))
    assert found == [
        "sources.gh.scheme: Value error, unknown scheme 'github'; expected one of "
        "gitea-sha256, hub-sha256, standard-webhooks"
    ]


def test_source_without_secret_rejected(tmp_path: Path) -> None:
    found = problems(write(tmp_path, MINIMAL + '\n[sources.gh]\nscheme = "hub-sha256"\n'))
    assert found == ["sources.gh.secret_files: Field required"]


def test_source_with_empty_secret_files_rejected(tmp_path: Path) -> None:
    found = problems(write(tmp_path, MINIMAL + '\n[sources.gh]\nscheme = "hub-sha256"\nsecret_files = []\n'))
    assert len(found) == 1
    assert found[0].startswith("sources.gh.secret_files: ")


def test_unknown_top_level_key_rejected(tmp_path: Path) -> None:
    assert problems(write(tmp_path, "bogus = 1\n" + MINIMAL)) == ["bogus: Extra inputs are not permitted"]


def test_unknown_nested_key_rejected(tmp_path: Path) -> None:
    found = problems(write(tmp_path, MINIMAL + '\n[server]\nhots = "0.0.0.0"\n'))
    assert found == ["server.hots: Extra inputs are not permitted"]


def test_missing_pools_rejected(tmp_path: Path) -> None:
    assert problems(write(tmp_path, 'controller_id = "c"\ndata_dir = "d"\n')) == ["pools: Field required"]


def test_empty_pools_rejected(tmp_path: Path) -> None:
    found = problems(write(tmp_path, 'controller_id = "c"\ndata_dir = "d"\npools = {}\n'))
    assert len(found) == 1
    assert found[0].startswith("pools: ")


def test_missing_controller_id_and_data_dir(tmp_path: Path) -> None:
    found = problems(write(tmp_path, '[pools.default]\nimage = "x"\n'))
    assert sorted(found) == ["controller_id: Field required", "data_dir: Field required"]


@pytest.mark.parametrize("cid", ["", "-ctl", "ctl 1", "c" * 64, "ctl/1"])
def test_bad_controller_id(tmp_path: Path, cid: str) -> None:
    found = problems(write(tmp_path, MINIMAL.replace('"ctl-1"', f'"{cid}"')))
    assert len(found) == 1
    assert found[0].startswith("controller_id: ")


def test_bad_pool_name(tmp_path: Path) -> None:
    found = problems(write(tmp_path, MINIMAL.replace("[pools.default]", '[pools."bad name"]')))
    assert len(found) == 1
    assert found[0].startswith("pools.bad name.[key]: ")


def test_several_problems_reported_at_once(tmp_path: Path) -> None:
    found = pool_problems(tmp_path, 'user = "root"\nnetwork = "host"\nmemory = "lots"\n')
    assert [p.split(":")[0] for p in found] == [
        "pools.default.user",
        "pools.default.memory",
        "pools.default.network",
    ]


def test_duplicate_token_names_rejected(tmp_path: Path) -> None:
    h = hash_token("a")
    tokens = "".join(
        f'\n[[api.tokens]]\nname = "{name}"\nrole = "viewer"\nsha256 = "{h}"\n'
        for name in ("ops", "x", "ops", "x", "y")
    )
    found = problems(write(tmp_path, MINIMAL + tokens))
    assert found == ["api.tokens: Value error, token names must be unique, repeated: ops, x"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("sha256", '"ABC"'), ("sha256", '"' + "A" * 64 + '"'), ("role", '"root"'), ("name", '"-x"')],
)
def test_bad_token_fields(tmp_path: Path, field: str, value: str) -> None:
    entry = {"name": '"ops"', "role": '"admin"', "sha256": f'"{hash_token("t")}"', field: value}
    body = "\n[[api.tokens]]\n" + "".join(f"{k} = {v}\n" for k, v in entry.items())
    found = problems(write(tmp_path, MINIMAL + body))
    assert len(found) == 1
    assert found[0].startswith(f"api.tokens.0.{field}: ")


def test_secret_file_and_secret_files_both_rejected(tmp_path: Path) -> None:
    sf = secret_file(tmp_path)
    body = f'\n[sources.gh]\nscheme = "hub-sha256"\nsecret_file = "{sf}"\nsecret_files = ["{sf}"]\n'
    found = problems(write(tmp_path, MINIMAL + body))
    assert found == ["sources.gh: Value error, give secret_file or secret_files, not both"]


# --- secret files ---------------------------------------------------------------------------------


def test_secret_file_missing(tmp_path: Path) -> None:
    found = problems(write(tmp_path, MINIMAL + '\n[sources.gh]\nscheme = "hub-sha256"\nsecret_file = "nope.secret"\n'))
    assert found == [f"sources.gh.secret_files: {tmp_path.resolve() / 'nope.secret'}: file not found"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o601])
def test_secret_file_readable_by_others_rejected(tmp_path: Path, mode: int) -> None:
    sf = secret_file(tmp_path, mode=mode)
    found = problems(write(tmp_path, MINIMAL + f'\n[sources.gh]\nscheme = "hub-sha256"\nsecret_file = "{sf}"\n'))
    assert found == [f"sources.gh.secret_files: {sf}: readable by group/others; run chmod 600 on it"]


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_secret_file_private_modes_accepted(tmp_path: Path, mode: int) -> None:
    sf = secret_file(tmp_path, mode=mode)
    assert stat.S_IMODE(sf.stat().st_mode) == mode
    load_config(write(tmp_path, MINIMAL + f'\n[sources.gh]\nscheme = "hub-sha256"\nsecret_file = "{sf}"\n'))


def test_each_bad_secret_file_listed(tmp_path: Path) -> None:
    good = secret_file(tmp_path, SW_SECRET, "good.secret")
    loose = secret_file(tmp_path, SW_SECRET, "loose.secret", mode=0o644)
    body = f'\n[sources.sw]\nscheme = "standard-webhooks"\nsecret_files = ["{good}", "{loose}", "missing.secret"]\n'
    found = problems(write(tmp_path, MINIMAL + body))
    assert found == [
        f"sources.sw.secret_files: {loose}: readable by group/others; run chmod 600 on it",
        f"sources.sw.secret_files: {tmp_path.resolve() / 'missing.secret'}: file not found",
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("whsec_not base64!", "standard-webhooks secret must be 'whsec_' followed by valid base64"),
        ("whsec_abc", "standard-webhooks secret must be 'whsec_' followed by valid base64"),
        ("%%%%", "standard-webhooks secret must be 'whsec_' followed by valid base64"),
        ("whsec_", "secret is empty"),
    ],
)
def test_standard_webhooks_secret_must_be_base64(tmp_path: Path, content: str, message: str) -> None:
    sf = secret_file(tmp_path, content)
    found = problems(write(tmp_path, MINIMAL + f'\n[sources.sw]\nscheme = "standard-webhooks"\nsecret_file = "{sf}"\n'))
    assert found == [f"sources.sw.secret_files: {sf}: {message}"]


def test_standard_webhooks_secret_valid(tmp_path: Path) -> None:
    sf = secret_file(tmp_path, SW_SECRET + "\n")
    config = load_config(
        write(tmp_path, MINIMAL + f'\n[sources.sw]\nscheme = "standard-webhooks"\nsecret_file = "{sf}"\n')
    )
    source = config.sources["sw"]
    assert (source.scheme, source.secret_files) == ("standard-webhooks", [sf])
    # the HMAC key is what follows whsec_, base64-decoded; the editor's newline is not part of it
    assert read_source_secrets(source) == [b"0123456789abcdef0123456789abcdef"]


@pytest.mark.parametrize("content", ["", "   \n"])
def test_empty_secret_file_rejected(tmp_path: Path, content: str) -> None:
    sf = secret_file(tmp_path, content)
    found = problems(write(tmp_path, MINIMAL + f'\n[sources.gh]\nscheme = "hub-sha256"\nsecret_file = "{sf}"\n'))
    assert found == [f"sources.gh.secret_files: {sf}: secret is empty"]


def test_secret_file_that_is_a_directory_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    path = write(tmp_path, MINIMAL + '\n[sources.gh]\nscheme = "hub-sha256"\nsecret_file = "secrets"\n')
    with pytest.raises(ConfigError):
        load_config(path)


# --- file-level problems --------------------------------------------------------------------------


def test_config_file_missing(tmp_path: Path) -> None:
    assert problems(tmp_path / "absent.toml") == ["file not found"]


def test_invalid_toml(tmp_path: Path) -> None:
    found = problems(write(tmp_path, 'controller_id = "unterminated\n'))
    assert len(found) == 1
    assert found[0].startswith("not valid TOML: ")


def test_non_utf8_config_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(MINIMAL.replace("alpine:3", "alpïne").encode("latin-1"))
    with pytest.raises(ConfigError):
        load_config(path)


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_config_check_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, MINIMAL)
    assert main(["config", "check", str(path)]) == 0
    out, err = capsys.readouterr()
    digest = load_config(path).digest()[:16]
    assert out == f"{path}: OK (controller ctl-1, 1 pool(s), digest {digest})\n"
    assert err == ""


def test_cli_config_check_invalid_lists_each_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "bogus = 1\n" + MINIMAL + 'user = "0"\nnetwork = "host"\n')
    assert main(["config", "check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == f"{path}: invalid configuration"
    assert lines[1:] == [
        "  - pools.default.user: Value error, jobs never run as root (uid/gid 0)",
        "  - pools.default.network: Value error, network 'host' would share a host or container namespace; not allowed",
        "  - bogus: Extra inputs are not permitted",
    ]


def test_cli_config_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.toml"
    assert main(["config", "check", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"{path}: invalid configuration", "  - file not found"]


def test_cli_config_check_secret_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sf = secret_file(tmp_path, mode=0o644)
    path = write(tmp_path, MINIMAL + f'\n[sources.gh]\nscheme = "hub-sha256"\nsecret_file = "{sf}"\n')
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[1:] == [f"  - sources.gh.secret_files: {sf}: readable by group/others; run chmod 600 on it"]


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_cli_token_new(tmp_path: Path, capsys: pytest.CaptureFixture[str], role: str) -> None:
    assert main(["token", "new", "--name", "x", "--role", role]) == 0
    out, err = capsys.readouterr()
    match = re.fullmatch(r"token \(give to the client, shown once\): (\S+)\n", err)
    assert match, err
    token = match.group(1)
    assert len(token) >= 40
    assert token not in out, "the token itself must only go to stderr"
    snippet = tomllib.loads(out)
    assert snippet == {"api": {"tokens": [{"name": "x", "role": role, "sha256": hash_token(token)}]}}
    # The snippet drops straight into a config and authenticates that token.
    config = load_config(write(tmp_path, MINIMAL + "\n" + out))
    assert config.api.tokens[0].sha256 == hashlib.sha256(token.encode()).hexdigest()


def test_cli_token_new_defaults_to_viewer_and_is_random(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "new", "--name", "a"]) == 0
    first = capsys.readouterr()
    assert main(["token", "new", "--name", "a"]) == 0
    second = capsys.readouterr()
    assert tomllib.loads(first.out)["api"]["tokens"][0]["role"] == "viewer"
    assert first.err != second.err
    assert first.out != second.out


def test_cli_token_new_rejects_unknown_role(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["token", "new", "--name", "x", "--role", "root"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        (
            "intake_workers = 2",
            "server: Value error, intake_workers needs webhook_port: the workers serve that listener only",
        ),
        ("port = 8080\nwebhook_port = 8080", "server: Value error, webhook_port must differ from port (8080)"),
        ("webhook_port = 9000\nintake_workers = 33", "server.intake_workers: Input should be less than or equal to 32"),
        ("webhook_port = 70000", "server.webhook_port: Input should be less than or equal to 65535"),
    ],
)
def test_webhook_listener_problems_are_named(tmp_path: Path, server: str, expected: str) -> None:
    assert problems(write(tmp_path, MINIMAL + f"\n[server]\n{server}\n")) == [expected]


def test_webhook_listener_settings(tmp_path: Path) -> None:
    server = load_config(write(tmp_path, MINIMAL + "\n[server]\n")).server
    assert (server.webhook_port, server.webhook_host, server.intake_workers) == (None, None, 0)
    text = MINIMAL + '\n[server]\nport = 8080\nwebhook_port = 8443\nwebhook_host = "0.0.0.0"\nintake_workers = 2\n'
    server = load_config(write(tmp_path, text)).server
    assert (server.webhook_port, server.webhook_host, server.intake_workers) == (8443, "0.0.0.0", 2)
    text = MINIMAL + '\n[server]\nport = 8080\nwebhook_port = 8080\nwebhook_host = "0.0.0.0"\n'
    assert problems(write(tmp_path, text)) == ["server: Value error, webhook_port must differ from port (8080)"]


def test_trusted_proxies_are_networks(tmp_path: Path) -> None:
    from orchestrator.config import ServerConfig

    server = ServerConfig(trusted_proxies=["10.0.0.0/8", " 192.0.2.7", "2001:db8::/32", "10.1.2.3/8"])
    assert [str(n) for n in server.trusted_networks] == ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "10.0.0.0/8"]
    with pytest.raises(ValueError, match=r"'proxy\.example' is not an IP address or network"):
        ServerConfig(trusted_proxies=["proxy.example"])


def test_cli_token_new_with_an_expiry_and_token_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "new", "--name", "ci", "--role", "approver", "--expires-days", "90"]) == 0
    out = capsys.readouterr().out
    expires = tomllib.loads(out)["api"]["tokens"][0]["expires"]
    assert 89 * 86400 < expires.timestamp() - time.time() <= 90 * 86400
    body = MINIMAL + "\n" + out + '\n[[api.tokens]]\nname = "old"\nrole = "viewer"\npools = ["default"]\n'
    body += f'sha256 = "{hash_token("old-token")}"\nexpires = 2020-01-01T00:00:00Z\n'
    path = write(tmp_path, body)
    config = load_config(path)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    (config.data_dir / "token-usage.json").write_text(json.dumps({"version": 1, "last_used": {"ci": time.time()}}))
    assert main(["token", "list", "--config", str(path)]) == 1  # "old" has expired
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "SCOPE", "EXPIRES", "LAST", "USED", "STATUS"]
    assert lines[1].split()[:3] == ["ci", "approver", "everywhere"] and lines[1].endswith("ok")
    assert lines[2].split()[:4] == ["old", "viewer", "pools", "default"] and lines[2].endswith("expired")
    assert main(["token", "list", "--config", str(path), "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["status"], r["last_used"] != "never") for r in rows] == [
        ("ci", "ok", True),
        ("old", "expired", False),
    ]

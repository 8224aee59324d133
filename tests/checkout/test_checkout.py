"""The checkout against real git servers on 127.0.0.1 (tests/checkout/git_server.py): git's smart-HTTP backend
with basic auth, `git daemon`, file://. What a job receives must be exactly the commit's tree; what the remote is
asked must be only what is new; every refusal must say why without a credential in it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import tarfile
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.checkout import (
    Checkouts,
    CheckoutTimeout,
    CredentialRefused,
    GitMissing,
    InvalidSha,
    PreparedTree,
    RepositoryNotFound,
    SubmoduleRefused,
    TreeTooLarge,
    UnknownCommit,
)
from orchestrator.config import Config

from git_server import Exec, GitDaemon, GitHttpServer, Link, SourceRepo, git

TOKEN = "tok-3f9a1c77-never-in-argv"


@dataclass
class Env:
    tmp: Path
    root: Path  # served repositories: root/org/app.git
    server: GitHttpServer
    token_file: Path

    def repo(self, name: str = "org/app", **kw: Any) -> SourceRepo:
        return SourceRepo(self.tmp / "work" / name, self.root / f"{name}.git", **kw)

    def config(self, **checkout: Any) -> Config:
        checkout.setdefault("remote", self.server.url + "/{repository}.git")
        checkout.setdefault("token_file", str(self.token_file))
        return Config.model_validate(
            {
                "controller_id": "ctl",
                "data_dir": str(self.tmp / "data"),
                "pools": {"default": {"image": "x"}},
                "sources": {"src": {"scheme": "standard-webhooks", "secret_file": "/x", "checkout": checkout}},
            }
        )

    def checkouts(self, **checkout: Any) -> Checkouts:
        return Checkouts(self.config(**checkout))


async def _env(tmp_path: Path, **server: Any) -> AsyncIterator[Env]:
    token_file = tmp_path / "git.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    srv = GitHttpServer(tmp_path / "srv", token=TOKEN, **server)
    await srv.start()
    try:
        yield Env(tmp_path, tmp_path / "srv", srv, token_file)
    finally:
        await srv.stop()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async for e in _env(tmp_path):
        yield e


@pytest.fixture
async def env_v0(tmp_path: Path) -> AsyncIterator[Env]:
    """The server speaks protocol v0 only: ids are fetchable only as uploadpack.allow*SHA1InWant says."""
    async for e in _env(tmp_path, v2=False):
        yield e


def members(tree: PreparedTree) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(tree.archive) as tf:
        return {m.name: m for m in tf.getmembers()}


def contents(tree: PreparedTree) -> dict[str, bytes]:
    with tarfile.open(tree.archive) as tf:
        out = {}
        for m in tf.getmembers():
            if m.isfile():
                f = tf.extractfile(m)
                assert f is not None
                out[m.name] = f.read()
        return out


def mirror_objects(data: Path) -> int:
    """Distinct objects in every mirror (a thin pack's bases, appended by index-pack, are counted once)."""
    total = 0
    for mirror in (data / "checkout").glob("*.git"):
        listed = git(f"--git-dir={mirror}", "cat-file", "--batch-all-objects", "--batch-check=%(objectname)")
        total += len(set(listed.split()))
    return total


# --- the tree -------------------------------------------------------------------------------------------------


async def test_exactly_the_commits_tree(env: Env) -> None:
    repo = env.repo()
    sha = repo.commit(
        {
            "README.md": "hello\r\n",
            "src/main.c": "int main(void) { return 0; }\n",
            "bin/build.sh": Exec(b"#!/bin/sh\necho build\n"),
            "docs/latest": Link("../README.md"),
            "escape": Link("../../../etc/passwd"),  # recorded as is; the extraction decides
            "deep/a/b/c/d.txt": b"\x00\x01binary\xff",
            "ignored.txt": "export-ignore must not drop me\n",
            "version.txt": "$Format:%H$\n",
            ".gitattributes": "ignored.txt export-ignore\nversion.txt export-subst\n*.md eol=crlf text\n",
        }
    )
    repo.push()
    tree = await env.checkouts().prepare("src", "org/app", sha)
    try:
        got = members(tree)
        assert tree.commit == sha and tree.repository == "org/app"
        assert tree.remote == f"{env.server.url}/org/app.git"
        assert all(name.startswith("./") for name in got)
        assert all(m.uid == 0 and m.gid == 0 and m.uname == "" and m.gname == "" for m in got.values())
        files = {n for n, m in got.items() if m.isfile()}
        assert files == {
            "./README.md", "./src/main.c", "./bin/build.sh", "./deep/a/b/c/d.txt", "./ignored.txt", "./version.txt",
            "./.gitattributes",
        }  # fmt: skip
        assert got["./bin/build.sh"].mode == 0o755
        assert got["./src/main.c"].mode == 0o644
        assert got["./docs/latest"].issym() and got["./docs/latest"].linkname == "../README.md"
        assert got["./escape"].issym() and got["./escape"].linkname == "../../../etc/passwd"
        assert got["./deep/a/b"].isdir()
        data = contents(tree)
        assert data["./README.md"] == b"hello\n"  # as stored; a work-tree checkout would apply eol=crlf
        assert data["./version.txt"] == b"$Format:%H$\n"  # no export-subst
        assert data["./deep/a/b/c/d.txt"] == b"\x00\x01binary\xff"
        # byte for byte what git stores, every blob
        for name, blob in data.items():
            stored = subprocess.run(
                ["git", "cat-file", "blob", f"{sha}:{name[2:]}"], cwd=repo.bare, capture_output=True, check=True
            )
            assert blob == stored.stdout, name
        assert tree.files == 9
        assert tree.content_bytes == sum(len(b) for b in data.values()) + len("../README.md") + len(
            "../../../etc/passwd"
        )
        assert tree.size == tree.archive.stat().st_size and tree.size % 512 == 0
    finally:
        await tree.aremove()
    assert not tree.archive.parent.exists()


async def test_second_job_fetches_only_what_is_new(env: Env) -> None:
    repo = env.repo()
    files: dict[str, bytes | str | Link | Exec] = {
        f"pkg/m{i}/f{j}.txt": os.urandom(300).hex() for i in range(20) for j in range(10)
    }
    first = repo.commit(files)
    repo.push()
    checkouts = env.checkouts()
    async with await checkouts.prepare("src", "org/app", first) as tree:
        assert tree.fetched and tree.files == 200
    first_bytes, first_objects = env.server.bytes_out(), mirror_objects(env.tmp / "data")
    assert first_objects == 1 + 1 + 1 + 20 + 200  # commit, root tree, pkg/, 20 dirs, 200 blobs

    second = repo.commit({"pkg/m3/f4.txt": "changed\n"})
    repo.push()
    env.server.requests.clear()
    async with await checkouts.prepare("src", "org/app", second) as tree:
        assert tree.fetched and tree.commit == second
        assert contents(tree)["./pkg/m3/f4.txt"] == b"changed\n"
    # new: the commit, the root tree, pkg/, pkg/m3/ and the one blob
    assert mirror_objects(env.tmp / "data") - first_objects == 5
    assert env.server.bytes_out() < first_bytes / 20, (env.server.bytes_out(), first_bytes)

    env.server.requests.clear()  # a job of a commit already in the mirror asks the remote nothing
    async with await checkouts.prepare("src", "org/app", first) as tree:
        assert not tree.fetched and tree.commit == first
    assert env.server.requests == []
    async with await Checkouts(env.config()).prepare("src", "org/app", second) as tree:  # a restarted controller
        assert not tree.fetched
    assert env.server.requests == []


async def test_concurrent_jobs_of_one_repository_fetch_once(env: Env) -> None:
    repo, other = env.repo(), env.repo("org/other")
    sha = repo.commit({f"f{i}": str(i) * 1000 for i in range(50)})
    repo.push()
    other_sha = other.commit({"x": "y"})
    other.push()
    checkouts = env.checkouts()
    trees = await asyncio.gather(
        checkouts.prepare("src", "org/app", sha),
        checkouts.prepare("src", "org/app", sha),
        checkouts.prepare("src", "org/other", other_sha),
        checkouts.prepare("src", "org/app", sha),
    )
    try:
        assert checkouts.fetches == 2  # one per repository
        assert sum(t.fetched for t in trees) == 2
        assert contents(trees[0]) == contents(trees[1]) == contents(trees[3])
        assert len({t.archive for t in trees}) == 4  # each job its own archive
        git(f"--git-dir={next((env.tmp / 'data' / 'checkout').glob('org_app-*.git'))}", "fsck", "--no-dangling")
    finally:
        for t in trees:
            t.remove()


# --- what the remote may not have ---------------------------------------------------------------------------


async def test_unknown_sha(env: Env) -> None:
    repo = env.repo()
    repo.commit({"a": "b"})
    repo.push()
    missing = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(UnknownCommit) as err:
        await env.checkouts().prepare("src", "org/app", missing)
    assert f"the remote has no commit {missing}" in err.value.reason
    assert "org/app" in err.value.reason and env.server.url in err.value.reason
    assert TOKEN not in err.value.reason


async def test_abbreviated_sha_is_refused_before_any_fetch(env: Env) -> None:
    repo = env.repo()
    sha = repo.commit({"a": "b"})
    repo.push()
    checkouts = env.checkouts()
    with pytest.raises(InvalidSha, match="full 40-hex"):
        await checkouts.prepare("src", "org/app", sha[:12])
    assert env.server.requests == [] and checkouts.fetches == 0


async def test_force_pushed_commit_v2_server_still_serves_it(env: Env) -> None:
    """Protocol v2 servers hand out any object they still have by id: the commit a job names is delivered even
    after a force-push took it off its branch (it is still exactly that commit)."""
    repo = env.repo()
    old = repo.commit({"a": "old"})
    repo.push()
    repo.reset_hard("HEAD~0")
    git("commit", "-q", "--amend", "-m", "rewritten", cwd=repo.work)
    repo.push(force=True)
    async with await env.checkouts().prepare("src", "org/app", old) as tree:
        assert tree.commit == old and contents(tree) == {"./a": b"old"}
    repo.gc_server()  # once the server dropped the object, nobody has it
    with pytest.raises(UnknownCommit, match=f"the remote has no commit {old}"):
        await Checkouts(env.config(mirror_dir=str(env.tmp / "fresh"))).prepare("src", "org/app", old)


async def test_force_pushed_commit_v0_server_reachable_only(env_v0: Env) -> None:
    """A v0 server with allowReachableSHA1InWant serves commits its refs reach, nothing else: after a force-push
    the old commit is refused, with a clear reason; a commit an earlier job fetched is still in the mirror."""
    env = env_v0
    repo = env.repo()
    base = repo.commit({"a": "1"})
    old = repo.commit({"a": "2"})
    repo.push()
    git("config", "uploadpack.allowReachableSHA1InWant", "true", cwd=repo.bare)
    checkouts = env.checkouts()
    async with await checkouts.prepare("src", "org/app", base) as tree:  # not a tip, but reachable
        assert contents(tree) == {"./a": b"1"}
    async with await checkouts.prepare("src", "org/app", old) as tree:
        assert tree.fetched
    repo.reset_hard(base)
    forced = repo.commit({"a": "3"})
    repo.push(force=True)
    async with await checkouts.prepare("src", "org/app", forced) as tree:
        assert contents(tree) == {"./a": b"3"}
    async with await checkouts.prepare("src", "org/app", old) as tree:  # fetched before the force-push
        assert not tree.fetched and contents(tree) == {"./a": b"2"}
    with pytest.raises(UnknownCommit) as err:  # a mirror that never saw it
        await Checkouts(env.config(mirror_dir=str(env.tmp / "fresh"))).prepare("src", "org/app", old)
    assert f"the remote has no commit {old}" in err.value.reason
    assert "no branch or tag reaches it" in err.value.reason


async def test_v0_server_without_sha_fetching_falls_back_to_refs(env_v0: Env) -> None:
    """Default v0 upload-pack: only advertised tips may be asked for; a commit behind a tip is found by fetching
    the branches' history."""
    env = env_v0
    repo = env.repo()
    older = repo.commit({"a": "1"})
    repo.commit({"a": "2"})
    repo.push()
    checkouts = env.checkouts()
    async with await checkouts.prepare("src", "org/app", older) as tree:
        assert contents(tree) == {"./a": b"1"}
    assert checkouts.fetches == 2  # by id (refused), then the refs


async def test_repository_not_found(env: Env) -> None:
    with pytest.raises(RepositoryNotFound) as err:
        await env.checkouts().prepare("src", "org/nothing", "a" * 40)
    assert err.value.reason.startswith(f"repository org/nothing not found at {env.server.url}/org/nothing.git")


# --- limits ---------------------------------------------------------------------------------------------------


async def test_too_large(env: Env) -> None:
    repo = env.repo()
    sha = repo.commit({"big.bin": os.urandom(200_000), "small": "x"})
    repo.push()
    with pytest.raises(TreeTooLarge) as err:
        await env.checkouts(max_bytes=100_000).prepare("src", "org/app", sha)
    assert err.value.reason == (
        f"org/app at {sha}: the tree is 200001 bytes, over the checkout cap of 100000 bytes (max_bytes of the "
        "source's checkout); raise the cap or make the repository smaller"
    )
    assert list((env.tmp / "data" / "checkout" / ".tmp").iterdir()) == []  # nothing half-written left


async def test_timeout_kills_git(tmp_path: Path) -> None:
    async for env in _env(tmp_path, stall_s=1.5):
        checkouts = env.checkouts(timeout_s=0.3)
        started = asyncio.get_running_loop().time()
        with pytest.raises(CheckoutTimeout, match=r"took longer than 0\.3 s"):
            await checkouts.prepare("src", "org/app", "a" * 40)
        assert asyncio.get_running_loop().time() - started < 1.2
        assert not [p for p in _git_processes() if str(tmp_path) in p], "git left running"


def test_git_missing(env: Env) -> None:
    checkouts = Checkouts(env.config(), git="/nonexistent/git")
    with pytest.raises(GitMissing, match="git is not installed"):
        asyncio.run(checkouts.prepare("src", "org/app", "a" * 40))


# --- credentials ----------------------------------------------------------------------------------------------


async def test_credential_refused(env: Env) -> None:
    repo = env.repo()
    sha = repo.commit({"a": "b"})
    repo.push()
    wrong = env.tmp / "wrong.token"
    wrong.write_text("not-the-token")
    wrong.chmod(0o600)
    with pytest.raises(CredentialRefused) as err:
        await env.checkouts(token_file=str(wrong)).prepare("src", "org/app", sha)
    assert err.value.reason.startswith(f"remote refused the credential in token_file {wrong} (org/app at ")
    assert "not-the-token" not in err.value.reason
    with pytest.raises(CredentialRefused, match="has none: set token_file"):
        await env.checkouts(token_file=None).prepare("src", "org/app", sha)


async def test_token_never_on_a_command_line_nor_in_files(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two views: the argv handed to every git this package starts, and /proc/*/cmdline of every process on the
    machine (git, git-remote-http, ...) sampled while the fetch runs."""
    repo = env.repo()
    sha = repo.commit({f"f{i}": os.urandom(2000).hex() for i in range(300)})
    repo.push()
    argvs: list[tuple[str, ...]] = []
    real = asyncio.create_subprocess_exec

    async def spy(program: str, *args: str, **kw: Any) -> Any:
        argvs.append((program, *args))
        return await real(program, *args, **kw)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spy)
    seen: set[str] = set()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.update(_git_processes())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        tree = await env.checkouts().prepare("src", "org/app", sha)
    finally:
        stop.set()
        sampler.join()
    import base64

    encoded = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    assert any("fetch" in argv for argv in argvs)
    assert not [a for a in argvs if any(TOKEN in x or encoded in x for x in a)]
    assert any("remote-http" in cmd or " fetch " in cmd for cmd in seen), seen  # the sampler did see git
    assert not [cmd for cmd in seen if TOKEN in cmd or encoded in cmd]
    for path in (env.tmp / "data").rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert TOKEN.encode() not in blob and encoded.encode() not in blob, path
    tree.remove()


def _git_processes() -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("git") or "/git" in cmd.split(" ")[0]:
            found.append(cmd)
    return found


# --- other transports -----------------------------------------------------------------------------------------


async def test_git_daemon_and_file_remotes(env: Env) -> None:
    repo = env.repo()
    sha = repo.commit({"x.txt": "via git://", "run": Exec(b"#!/bin/sh\n")})
    repo.push()
    daemon = GitDaemon(env.root)
    daemon.start()
    try:
        async with await env.checkouts(remote=daemon.url + "/{repository}.git", token_file=None).prepare(
            "src", "org/app", sha
        ) as tree:
            assert contents(tree)["./x.txt"] == b"via git://" and members(tree)["./run"].mode == 0o755
        with pytest.raises(RepositoryNotFound):
            await env.checkouts(remote=daemon.url + "/{repository}.git", token_file=None).prepare(
                "src", "org/none", sha
            )
    finally:
        daemon.stop()
    local = env.checkouts(remote=f"file://{env.root}/{{repository}}.git", token_file=None)
    async with await local.prepare("src", "org/app", sha) as tree:
        assert contents(tree)["./x.txt"] == b"via git://"


# --- submodules -----------------------------------------------------------------------------------------------


async def test_submodules_are_opt_in(env: Env) -> None:
    lib = env.repo("org/lib")
    lib_sha = lib.commit({"lib.h": "#define LIB 1\n", "tool": Exec(b"#!/bin/sh\n")})
    lib.push()
    lib.commit({"lib.h": "#define LIB 2\n"})  # the branch moves on; the pinned commit stays
    lib.push()
    app = env.repo()
    app.add_submodule("vendor/lib", "../lib.git", lib_sha)
    sha = app.commit({"main.c": "#include <lib.h>\n"})
    app.push()
    checkouts = env.checkouts()
    async with await checkouts.prepare("src", "org/app", sha) as tree:
        got = members(tree)
        assert got["./vendor/lib"].isdir() and not [n for n in got if n.startswith("./vendor/lib/")]
        assert tree.submodules == ()
    async with await checkouts.prepare("src", "org/app", sha, submodules=True) as tree:
        assert contents(tree)["./vendor/lib/lib.h"] == b"#define LIB 1\n"
        assert members(tree)["./vendor/lib/tool"].mode == 0o755
        [sub] = tree.submodules
        assert (sub.path, sub.repository, sub.commit) == ("vendor/lib", "org/lib", lib_sha)
        assert sub.remote == f"{env.server.url}/org/lib.git"


async def test_submodule_elsewhere_is_refused(env: Env) -> None:
    app = env.repo()
    app.add_submodule("ext", "https://user:pw@elsewhere.example/x/y.git", "b" * 40)
    sha = app.commit({"a": "b"})
    app.push()
    with pytest.raises(SubmoduleRefused) as err:
        await env.checkouts().prepare("src", "org/app", sha, submodules=True)
    assert "not a repository of the remote" in err.value.reason and "pw" not in err.value.reason


async def test_sha256_repository(env: Env) -> None:
    repo = env.repo("org/modern", object_format="sha256")
    sha = repo.commit({"a": "sha256 objects"})
    repo.push()
    assert len(sha) == 64
    async with await env.checkouts().prepare("src", "org/modern", sha) as tree:
        assert tree.commit == sha and contents(tree) == {"./a": b"sha256 objects"}

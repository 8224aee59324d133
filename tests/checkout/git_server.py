"""Real git servers on 127.0.0.1 for the checkout tests and bench/bench_checkout.py (no pytest in here).

* GitHttpServer: git's own smart-HTTP backend (`git http-backend`, CGI) behind a small aiohttp handler, with basic
  auth when a token is set; protocol v2 when `v2` (the Git-Protocol header passed on as GIT_PROTOCOL, as web
  servers are told to), else v0. It records every request with the bytes it answered.
* GitDaemon: `git daemon` for git:// (unauthenticated).
* SourceRepo: a work repository to commit files, symlinks and executables in, pushed to a bare repository.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ports import free_port

GIT_ENV = {
    "PATH": os.environ.get("PATH", os.defpath),
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "LC_ALL": "C",
}


def git(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        ["git", *map(str, args)], cwd=cwd, env={**GIT_ENV, **(env or {})}, capture_output=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"git {' '.join(map(str, args))}: {out.stderr.decode(errors='replace')}")
    return out.stdout.decode(errors="replace").strip()


@dataclass
class Link:
    target: str


@dataclass
class Exec:
    content: bytes


class SourceRepo:
    """A work tree at `work` whose commits are pushed to the bare repository `bare` (created)."""

    def __init__(self, work: Path, bare: Path, *, object_format: str = "sha1") -> None:
        self.work, self.bare = work, bare
        bare.parent.mkdir(parents=True, exist_ok=True)
        git("init", "-q", "--bare", "-b", "main", f"--object-format={object_format}", bare)
        git("init", "-q", "-b", "main", f"--object-format={object_format}", work)
        self._tick = 1_700_000_000

    def commit(
        self, files: dict[str, bytes | str | Link | Exec], *, message: str = "change", remove: tuple[str, ...] = ()
    ) -> str:
        for name in remove:
            (self.work / name).unlink()
        for name, content in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink() or path.exists():
                path.unlink()
            if isinstance(content, Link):
                path.symlink_to(content.target)
            elif isinstance(content, Exec):
                path.write_bytes(content.content)
                path.chmod(0o755)
            else:
                path.write_bytes(content.encode() if isinstance(content, str) else content)
                path.chmod(0o644)
        git("add", "-A", cwd=self.work)
        self._tick += 60
        stamp = {"GIT_AUTHOR_DATE": f"{self._tick} +0000", "GIT_COMMITTER_DATE": f"{self._tick} +0000"}
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work, env=stamp)
        return git("rev-parse", "HEAD", cwd=self.work)

    def add_submodule(self, path: str, url: str, commit: str) -> None:
        """A gitlink at `path` pinned to `commit`, declared in .gitmodules with `url` (no clone needed)."""
        (self.work / path).mkdir(parents=True, exist_ok=True)  # empty: a submodule not checked out, as git sees it
        git("config", "-f", ".gitmodules", f"submodule.{path}.path", path, cwd=self.work)
        git("config", "-f", ".gitmodules", f"submodule.{path}.url", url, cwd=self.work)
        git("update-index", "--add", "--cacheinfo", f"160000,{commit},{path}", cwd=self.work)
        git("add", ".gitmodules", cwd=self.work)

    def push(self, *, force: bool = False) -> None:
        git("push", "-q", *(["--force"] if force else []), self.bare, "main", cwd=self.work)

    def reset_hard(self, rev: str) -> None:
        git("reset", "-q", "--hard", rev, cwd=self.work)

    def gc_server(self) -> None:
        """Drops unreachable objects from the bare repository, as a forge eventually does after a force-push."""
        git("reflog", "expire", "--expire=now", "--all", cwd=self.bare)
        git("gc", "-q", "--prune=now", cwd=self.bare)


@dataclass
class Request:
    method: str
    path: str
    status: int
    bytes_out: int


@dataclass
class GitHttpServer:
    root: Path
    token: str | None = None
    username: str = "x-access-token"
    v2: bool = True
    stall_s: float = 0.0  # delay every answer (timeout tests)
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def fetches(self) -> int:
        """upload-pack POSTs: one per fetch with protocol v0, two or more per fetch with v2 (ls-refs + fetch)."""
        return sum(1 for r in self.requests if r.method == "POST" and r.path.endswith("/git-upload-pack"))

    def bytes_out(self) -> int:
        return sum(r.bytes_out for r in self.requests)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.stall_s:
            await asyncio.sleep(self.stall_s)
        if self.token is not None:
            expected = "Basic " + base64.b64encode(f"{self.username}:{self.token}".encode()).decode()
            if request.headers.get("Authorization") != expected:
                self.requests.append(Request(request.method, request.path, 401, 0))
                return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="git"'})
        body = await request.read()
        env = {
            **GIT_ENV,
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": request.method,
            "PATH_INFO": request.path,
            "QUERY_STRING": request.query_string,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": request.remote or "127.0.0.1",
        }
        if body[:2] == b"\x1f\x8b":  # aiohttp did not inflate it
            env["HTTP_CONTENT_ENCODING"] = "gzip"
        if self.token is not None:
            env["REMOTE_USER"] = self.username
        if self.v2 and "Git-Protocol" in request.headers:
            env["GIT_PROTOCOL"] = request.headers["Git-Protocol"]
        proc = await asyncio.create_subprocess_exec(
            "git",
            "http-backend",
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate(body)
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers[name.strip()] = value.strip()
        self.requests.append(Request(request.method, request.path, status, len(payload)))
        return web.Response(status=status, headers=headers, body=payload)


class GitDaemon:
    """`git daemon` exporting every repository under `root` on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"git://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        self.proc = subprocess.Popen(
            [
                "git",
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--informative-errors",
                f"--base-path={self.root}",
                "--listen=127.0.0.1",
                f"--port={self.port}",
                str(self.root),
            ],
            env=GIT_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self.url
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("git daemon exited") from None
                import time

                time.sleep(0.02)
        raise RuntimeError("git daemon did not listen")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True)

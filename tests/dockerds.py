"""Extra, independent Docker engines on this machine, for tests that place jobs on several engines and lose one.

Each `DockerDaemon` is a dockerd of its own with a containerd this module starts for it (never the main daemon's
nor a system containerd: dockerd 20.10 would silently share /run/containerd/containerd.sock if one existed), its
own data root, exec root, pid file, unix socket, cgroup parent and daemon.json; no TCP listener, no bridge, no
iptables, the main daemon's storage driver (vfs here) and its extra OCI runtimes (runsc when configured).

    with daemons(tmp_path, 2) as (a, b):
        engine = DockerEngine(a.base_url, retry_budget_s=1)
        ...
        a.kill()  # like losing the host: dockerd, containerd, the shims and every container process, SIGKILL

What a daemon owns, and how `kill()` finds it (nothing is matched by process name, so the main daemon and other
test runs are never touched):
  * dockerd and containerd: children of this process (Popen);
  * the containerd-shim-runc-v2 processes: they daemonize (their parent is gone, they are re-parented), and are
    recognised by `-address <this daemon's containerd socket>` on their command line;
  * the container processes (runc, or runsc's sandbox and gofer): descendants of the shims, and in any case in
    cgroups under this daemon's own `--cgroup-parent`, which `kill()` scans too.
Everything found is first stopped (SIGSTOP, repeated until no new process appears, so nothing forks away), then
SIGKILLed together, then waited for. `stop()` afterwards (or instead) unmounts what the dead daemon left mounted
under its directories (the containers' /dev/shm tmpfs, network namespace files), removes its cgroups and its
shims' sockets in /run/containerd/s, and deletes its data and exec roots; the logs stay in `root`.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker

TEST_IMAGE = os.environ.get("ORCHESTRATOR_TEST_IMAGE", "runner-orchestrator/test-runner:local")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
_SOCKET_PATH_MAX = 100  # containerd refuses socket paths over 104 bytes, and adds ".ttrpc" to its socket's name
_DEFAULT_RUNTIMES = {"runc", "io.containerd.runc.v2", "io.containerd.runtime.v1.linux"}
_MNT_DETACH = 2
_SHIM_SOCKETS = Path("/run/containerd/s")
_CGROUP_ROOT = Path("/sys/fs/cgroup")

_saved_images: dict[str, bytes] = {}  # image id -> `docker save` of the main daemon, made once per process
_saved_lock = threading.Lock()
_running: set[DockerDaemon] = set()


class DaemonError(RuntimeError):
    """A harness daemon did not start, or did not go away."""


def main_client() -> docker.DockerClient:
    """The machine's main Docker engine (DOCKER_HOST or /var/run/docker.sock)."""
    return docker.from_env(timeout=60)


def _short_dir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"orch-dd-{name[:8]}-", dir="/tmp"))


def _ping(sock_path: str, timeout_s: float = 2.0) -> bool:
    """GET /_ping over the unix socket; True when the engine answers OK."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(sock_path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        status_line = answer.split(b"\r\n", 1)[0].split()
        return len(status_line) >= 2 and status_line[1] == b"200"
    except OSError:
        return False


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state letter) of a live process, None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0]


def _cmdline(pid: int) -> list[str]:
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def _cgroups(pid: int) -> list[str]:
    try:
        return [line.split(":", 2)[2] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()]
    except (OSError, IndexError):
        return []


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def mount_points() -> list[str]:
    """Every mount point of this process's mount namespace (/proc/self/mountinfo, octal escapes decoded)."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        raw = line.split()[4]
        points.append(raw.encode().decode("unicode_escape"))
    return points


def _under(path: str, roots: Iterable[Path]) -> bool:
    return any(path == str(r) or path.startswith(str(r).rstrip("/") + "/") for r in roots)


class DockerDaemon:
    """One extra dockerd (with its own containerd) whose files all live under `root` (sockets under a short
    directory in /tmp when `root` is too long for a unix socket path)."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.root = Path(root).resolve()
        self.data_root = self.root / "data"
        run = self.root / "run"
        if len(str(run / "containerd" / "containerd.sock.ttrpc")) > _SOCKET_PATH_MAX:
            run = _short_dir(name)  # removed with the rest by stop()
        self.exec_root = run
        self.socket = run / "docker.sock"
        self.containerd_socket = run / "containerd" / "containerd.sock"
        self.pidfile = self.root / "dockerd.pid"
        self.log = self.root / "dockerd.log"
        self.containerd_log = self.root / "containerd.log"
        self.cgroup_parent = f"/orch-dd-{name[:16]}-{secrets.token_hex(4)}"
        self.base_url = f"unix://{self.socket}"
        self.startup_s: float | None = None
        self._dockerd: subprocess.Popen[bytes] | None = None
        self._containerd: subprocess.Popen[bytes] | None = None
        self._loaded: set[str] = set()
        self._client: docker.DockerClient | None = None

    def __repr__(self) -> str:
        return f"DockerDaemon({self.name!r}, {self.base_url})"

    # -- life cycle -------------------------------------------------------------------------------------------

    def start(self) -> str:
        """Start containerd and dockerd; return the engine's base_url once /_ping answers (DaemonError with the
        tail of the logs if it does not within START_TIMEOUT_S)."""
        if self._dockerd is not None:
            raise DaemonError(f"{self} already started")
        if _ping(str(self.socket)):  # or it would be taken for this one
            raise DaemonError(f"{self}: another engine already answers on {self.socket}")
        started = time.monotonic()
        for d in (self.root, self.data_root, self.exec_root / "containerd"):
            d.mkdir(parents=True, exist_ok=True)
        storage_driver, runtimes = self._main_settings()
        config = self.root / "daemon.json"
        config.write_text(json.dumps({"runtimes": runtimes}, indent=2) + "\n")
        containerd_config = self.exec_root / "containerd" / "containerd.toml"
        containerd_config.write_text(
            "version = 2\n"
            f'root = "{self.data_root / "containerd"}"\n'
            f'state = "{self.exec_root / "containerd" / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.containerd_socket}"\n'
            '[ttrpc]\n  address = ""\n[debug]\n  address = ""\n[metrics]\n  address = ""\n'
        )
        _running.add(self)
        with self.containerd_log.open("ab") as out:
            self._containerd = subprocess.Popen(
                ["containerd", "--config", str(containerd_config), "--log-level", "warn"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        args = [
            "dockerd",
            f"--config-file={config}",
            f"--data-root={self.data_root}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.pidfile}",
            f"--host={self.base_url}",
            f"--containerd={self.containerd_socket}",
            f"--storage-driver={storage_driver}",
            f"--cgroup-parent={self.cgroup_parent}",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--shutdown-timeout=2",
        ]
        with self.log.open("ab") as out:
            self._dockerd = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = started + START_TIMEOUT_S
        while not _ping(str(self.socket)):
            dead = [p for p in (self._containerd, self._dockerd) if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = (
                    f"exited with {dead[0].returncode}" if dead else f"did not answer /_ping in {START_TIMEOUT_S:.0f} s"
                )
                self.kill()
                self._cleanup()
                raise DaemonError(
                    f"{self}: {dead[0].args[0] if dead else 'dockerd'} {why}\n"
                    f"--- {self.log} ---\n{_tail(self.log)}\n"
                    f"--- {self.containerd_log} ---\n{_tail(self.containerd_log)}"
                )
            time.sleep(0.05)
        self.startup_s = time.monotonic() - started
        return self.base_url

    def stop(self) -> None:
        """SIGTERM dockerd (it stops its containers: --shutdown-timeout=2), then containerd, and wait; SIGKILL
        whatever is left after STOP_TIMEOUT_S. Then unmount, remove cgroups and directories (logs stay).
        Safe to call after kill() and more than once."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        for proc in (self._dockerd, self._containerd):
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                break  # kill() below takes care of it
        if self.processes():
            self.kill()
        self._cleanup()

    def kill(self) -> None:
        """Host loss: SIGKILL dockerd, its containerd, the shims and every container process at once (stopped
        first so none forks away), and wait until they are gone. Mounts and directories stay until stop()."""
        stopped: set[int] = set()
        for _ in range(50):
            found = set(self.processes()) - stopped
            if not found:
                break
            for pid in found:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            stopped |= found
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in (self._dockerd, self._containerd):
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(STOP_TIMEOUT_S)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while (left := self.processes()) and time.monotonic() < deadline:
            for pid in left:  # a process that was forking while we looked
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        if left:
            raise DaemonError(f"{self}: processes survived SIGKILL: {self._describe(left)}")

    # -- what it owns -----------------------------------------------------------------------------------------

    def processes(self) -> list[int]:
        """Live (not zombie) processes of this daemon: dockerd, containerd, shims, container processes."""
        seeds: set[int] = set()
        for proc in (self._dockerd, self._containerd):
            if proc is not None and proc.poll() is None:
                seeds.add(proc.pid)
        address = str(self.containerd_socket)
        tree: dict[int, int] = {}
        for pid in _all_pids():
            stat = _proc_stat(pid)
            if stat is None or stat[1] in "ZX":
                continue
            tree[pid] = stat[0]
            if address in _cmdline(pid) or any(_under(c, [Path(self.cgroup_parent)]) for c in _cgroups(pid)):
                seeds.add(pid)
        found = set(seeds)
        grew = True
        while grew:
            more = {pid for pid, parent in tree.items() if parent in found} - found
            found |= more
            grew = bool(more)
        return sorted(p for p in found if p in tree)

    def mounts(self) -> list[str]:
        """Mount points under this daemon's directories."""
        return [m for m in mount_points() if _under(m, [self.root, self.exec_root])]

    def _describe(self, pids: Iterable[int]) -> str:
        return "; ".join(f"{pid} {' '.join(_cmdline(pid))[:120]}" for pid in pids)

    def _cleanup(self) -> None:
        shim_sockets = [
            p.read_text().strip().removeprefix("unix://")
            for p in (self.exec_root / "containerd" / "state").glob("io.containerd.runtime.v2.task/*/*/address")
        ]
        libc = ctypes.CDLL(None, use_errno=True)
        for point in sorted(self.mounts(), key=len, reverse=True):
            if libc.umount2(point.encode(), _MNT_DETACH) != 0:
                raise DaemonError(f"{self}: cannot unmount {point}: {os.strerror(ctypes.get_errno())}")
        for sock in shim_sockets:
            if Path(sock).parent == _SHIM_SOCKETS:
                with contextlib.suppress(OSError):
                    os.unlink(sock)
        for hierarchy in _CGROUP_ROOT.iterdir() if _CGROUP_ROOT.is_dir() else []:
            top = hierarchy / self.cgroup_parent.lstrip("/")
            if top.is_dir():
                for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                    with contextlib.suppress(OSError):
                        d.rmdir()
                with contextlib.suppress(OSError):
                    top.rmdir()
        for d in (self.data_root, self.exec_root):
            shutil.rmtree(d, ignore_errors=True)
        self.pidfile.unlink(missing_ok=True)
        _running.discard(self)

    # -- use --------------------------------------------------------------------------------------------------

    def client(self) -> docker.DockerClient:
        """A docker SDK client of this engine (one per daemon, closed by stop())."""
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.base_url, timeout=60)
        return self._client

    def load_image(self, image: str = TEST_IMAGE) -> None:
        """Copy `image` from the main daemon into this one (docker save | docker load), once per daemon; the
        saved archive is kept in memory and reused for the other daemons of this process."""
        if image in self._loaded:
            return
        main = main_client()
        try:
            image_id = str(main.api.inspect_image(image)["Id"])
            with _saved_lock:
                if image_id not in _saved_images:
                    _saved_images[image_id] = b"".join(main.api.get_image(image))
        finally:
            main.close()
        self.client().api.load_image(_saved_images[image_id], quiet=True)
        loaded = str(self.client().api.inspect_image(image)["Id"])
        if loaded != image_id:
            raise DaemonError(f"{self}: loaded {image} as {loaded}, the main daemon has {image_id}")
        self._loaded.add(image)

    @staticmethod
    def _main_settings() -> tuple[str, dict[str, Any]]:
        """The main daemon's storage driver and its extra OCI runtimes (path and runtimeArgs, e.g. runsc)."""
        try:
            main = main_client()
            try:
                info = main.info()
            finally:
                main.close()
        except Exception:
            return "vfs", {}
        runtimes = {
            name: {k: v for k, v in rt.items() if k in ("path", "runtimeArgs") and v}
            for name, rt in (info.get("Runtimes") or {}).items()
            if name not in _DEFAULT_RUNTIMES and rt.get("path")
        }
        return str(info.get("Driver") or "vfs"), runtimes


@contextlib.contextmanager
def daemons(tmp: Path, n: int, *, image: str | None = TEST_IMAGE) -> Iterator[list[DockerDaemon]]:
    """Start `n` daemons under `tmp` (named dd0, dd1, …), load `image` into each (None: none), yield them, and
    stop every one at the end, also when the body or a start fails. The daemons start (and stop) concurrently.
    Usable from async tests too: entering and leaving block for a second or two, so in a test whose event loop must
    keep serving meanwhile, enter it in a thread or start DockerDaemon objects with asyncio.to_thread."""
    made = [DockerDaemon(Path(tmp) / f"dd{i}", f"dd{i}") for i in range(n)]

    def up(d: DockerDaemon) -> None:
        d.start()
        if image is not None:
            d.load_image(image)

    def down(d: DockerDaemon) -> str | None:
        try:
            d.stop()
        except Exception as exc:
            return f"{d}: {exc}"
        return None

    try:
        with ThreadPoolExecutor(max_workers=max(n, 1), thread_name_prefix="dockerds") as pool:
            list(pool.map(up, made))  # all at once; the first failure is raised once every start has ended
        yield made
    finally:
        with ThreadPoolExecutor(max_workers=max(n, 1), thread_name_prefix="dockerds") as pool:
            errors = [e for e in pool.map(down, made) if e]
        if errors:
            raise DaemonError("; ".join(errors))


@atexit.register
def _stop_leftovers() -> None:
    """A test process that exits without stop() (interrupted) still takes its daemons with it."""
    for d in list(_running):
        with contextlib.suppress(Exception):
            d.stop()

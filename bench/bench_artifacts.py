"""Artifact extraction throughput: the controller's side channel against `docker cp`, in MiB/s, side by side.

Why: /workspace is a tmpfs, which Docker's archive API cannot read, so the job script hands artifacts back itself
(a tar on the container's stderr, runtime/side_channel.py) and the controller keeps them whole or not at all with a
sha256 per file (artifacts/store.py). This measures what that costs against the usual way out of a container.

Each round makes the same payload (`--files` files of random bytes, `--mb` MiB in all; several sizes may be given)
on every side below, in an order that rotates from round to round; medians, MiB/s of the median, and the median of
per-round time ratios are printed. Every side's time starts when the bench reads the line `MARK-DONE` on the
container's stdout (the job's last command, after the files are written) and ends with the files on the host's
disk. Throughput = payload bytes / that time. Not timed: the payload's making, container create/start/removal, and
the removal of what was extracted.

* product: exactly the controller's container (`build_container_spec` of a default PoolConfig but for image,
  memory and workspace size; the job script over stdin with `WorkspaceIO(artifacts=("out",))` as
  `Workspaces.prepare` makes it) and exactly its read path: `AttachedStream.pump` demultiplexing the attach stream,
  stderr fed to a `SideChannel` spooling to a file (the cap `Workspaces.prepare` gives), then, once the pump saw
  EOF and `wait` returned, `sections` + `open_section` + `ArtifactStore.save`. The time therefore includes the
  epilogue's busybox tar in the container, the attach stream, the spool written to disk, the container's exit, the
  spool read back, unpacking with the checks and a sha256 of every file, the manifest (fsynced) and the rename
  into place. The controller's other work around it (its SQLite updates, log redaction, the event loop's thread
  hops) is not included.
* docker cp: the same image and hardening (`build_container_spec`, entrypoint replaced by `sh -c`, no stdin)
  but with a writable root filesystem (read_only off; the tmpfs mounts stay, none at /data), the files written to
  /data (made before start with put_archive, owned by the job's uid); the same attach read up to EOF, `wait`, then
  `get_archive("/data/out")` (the API `docker cp` uses) streamed into `tarfile` `r|` and `extractall` with the
  "data" filter into a temp dir. No hashing, no manifest, no fsync, no spool.
* docker cp + sha256: the same container and stream, unpacked with the product's own `artifacts.unpack.unpack`
  (the same checks and sha256 per file as the product), no manifest, no fsync, no spool: like for like with the
  product on the host side, so product - this is what the side channel's transport and spool cost.

The phase table splits each time at the container's exit as the bench saw it (`wait` returned): for the product
the tar crosses before the exit, for docker cp after. One asymmetry stays by design: the product's tar runs inside
the job's container, under the pool's CPU quota (cpus 1.0 here), while docker cp's archive is made by dockerd,
outside it. Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import secrets
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from _support import TEST_IMAGE, check_no_leftovers, machine_line, median, new_controller_id, reproduce_line, table

from orchestrator.artifacts.store import ArtifactStore
from orchestrator.artifacts.unpack import unpack
from orchestrator.config import PoolConfig
from orchestrator.jobs.spec import ArtifactReports, JobSpec
from orchestrator.runtime.container_spec import WorkspaceIO, build_container_spec, job_script, stdin_payload
from orchestrator.runtime.docker_engine import AttachedStream
from orchestrator.runtime.side_channel import SideChannel, open_section, sections

MiB = 1024 * 1024
MARK = b"\nMARK-DONE\n"  # the echoed command line is `$ echo MARK-DONE`: only the output line starts a line with it
SPOOL_SLACK = MiB  # as orchestrator/runtime/workspace.py _SPOOL_SLACK
SIDES = ("product", "docker cp", "docker cp + sha256")
DATA = "/data"


@dataclass(frozen=True)
class Payload:
    mib: int
    files: int

    @property
    def file_bytes(self) -> int:
        return self.mib * MiB // self.files

    @property
    def total(self) -> int:
        return self.file_bytes * self.files

    def command(self) -> str:
        """Run in the job's directory: `out/f0` .. `out/f<n-1>` of random bytes."""
        return (
            f"mkdir out && i=0; while [ $i -lt {self.files} ]; do "
            f"head -c {self.file_bytes} /dev/urandom > out/f$i || exit 1; i=$((i+1)); done"
        )

    def label(self) -> str:
        return f"{self.mib} MiB in {self.files} files"


@dataclass(frozen=True)
class Timing:
    total: float  # MARK-DONE seen -> files on disk, seconds
    to_exit: float  # MARK-DONE seen -> `wait` returned


class MarkWatch:
    """The `on_output` of the pump: notes when MARK-DONE arrives on stdout (the line may span chunks)."""

    def __init__(self) -> None:
        self.at: float | None = None
        self.text = bytearray(b"\n")

    def __call__(self, chunk: bytes) -> None:
        now = time.perf_counter()
        if self.at is None:
            self.text += chunk
            if MARK in self.text:
                self.at = now
            del self.text[: max(0, len(self.text) - len(MARK))]


def pump_and_wait(api: Any, cid: str, sock: Any, on_side: Callable[[bytes], None] | None) -> tuple[MarkWatch, float]:
    """The controller's read path: the pump reads the attach stream to EOF on a thread while `wait` runs here."""
    watch = MarkWatch()
    stream = AttachedStream(sock)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            stream.pump(watch, on_side)
        except BaseException as exc:  # surfaced below
            failure.append(exc)

    reader = threading.Thread(target=run, name="pump")
    reader.start()
    status = api.wait(cid, timeout=600)["StatusCode"]
    exited = time.perf_counter()
    reader.join()
    if failure:
        raise failure[0]
    assert status == 0 and watch.at is not None, f"container exited {status}, MARK-DONE seen: {watch.at is not None}"
    return watch, exited


def job(n: int, payload: Payload) -> JobSpec:
    return JobSpec(
        id=f"art-{n}",
        pool="default",
        repository="example/app",
        ref="refs/heads/main",
        sha="0" * 40,
        commands=[payload.command(), "echo MARK-DONE"],
        artifacts={"paths": ["out"]},
    )


def run_product(api: Any, controller_id: str, pool: PoolConfig, payload: Payload, n: int, work: Path) -> Timing:
    spec = job(n, payload)
    io_ = WorkspaceIO(nonce=secrets.token_hex(16), artifacts=("out",))  # as Workspaces.prepare makes it
    artifacts_max = pool.artifacts_max_bytes
    spool = work / f"{spec.id}-a1.side"
    side = SideChannel(io_.nonce, spool, artifacts_max + pool.cache_max_bytes + SPOOL_SLACK, lambda _b: None)
    store = ArtifactStore(work / "artifacts")
    cspec = build_container_spec(spec, pool, controller_id=controller_id)
    cid = api.create_container(host_config=api.create_host_config(**cspec.host), **cspec.create)["Id"]
    try:
        sock = api.attach_socket(cid, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        api.start(cid)
        getattr(sock, "_sock", sock).sendall(stdin_payload(job_script(spec.commands, (), io_)))
        watch, exited = pump_and_wait(api, cid, sock, side.feed)
        side.close()
        assert side.spool is not None and not side.overflowed, "no side channel section"
        with side.spool.open("rb") as data:
            found = {s.kind: s for s in sections(data, io_.nonce)}
            section = found["artifacts"]
            assert section.complete, "artifacts section cut short"
            with open_section(data, section) as archive:
                manifest = store.save(
                    spec.id, archive, max_bytes=artifacts_max, reports=ArtifactReports(), now=time.time()
                )
        done = time.perf_counter()
    finally:
        api.remove_container(cid, force=True, v=True)
    assert len(manifest.files) == payload.files and manifest.total_bytes == payload.total, manifest
    assert all(len(f.sha256) == 64 for f in manifest.files)
    spool.unlink()
    shutil.rmtree(work / "artifacts" / spec.id)
    assert watch.at is not None
    return Timing(done - watch.at, exited - watch.at)


class _Chunks(io.RawIOBase):
    """A file-like view of get_archive's chunk iterator, for tarfile's stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._rest:
            try:
                self._rest = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._rest))
        buffer[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


def _dir_entry(name: str, uid: int, gid: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        entry = tarfile.TarInfo(name)
        entry.type, entry.mode, entry.uid, entry.gid = tarfile.DIRTYPE, 0o755, uid, gid
        tar.addfile(entry)
    return buf.getvalue()


def run_docker_cp(
    api: Any, controller_id: str, pool: PoolConfig, payload: Payload, n: int, work: Path, *, hashed: bool
) -> Timing:
    spec = job(n, payload)
    cspec = build_container_spec(spec, pool, controller_id=controller_id)
    create: dict[str, Any] = dict(cspec.create)
    create.update(
        entrypoint=["/bin/sh", "-c", f"cd {DATA} && {payload.command()} && echo MARK-DONE"],
        working_dir=DATA,
        stdin_open=False,
    )
    host: dict[str, Any] = {**cspec.host, "read_only": False}
    uid, _, gid = pool.user.partition(":")
    dest = work / f"cp-{n}"
    cid = api.create_container(host_config=api.create_host_config(**host), **create)["Id"]
    try:
        api.put_archive(cid, "/", _dir_entry(DATA.lstrip("/"), int(uid), int(gid or uid)))
        sock = api.attach_socket(cid, params={"stdout": 1, "stderr": 1, "stream": 1})
        api.start(cid)
        watch, exited = pump_and_wait(api, cid, sock, None)
        chunks, _stat = api.get_archive(cid, f"{DATA}/out")
        with tarfile.open(fileobj=_Chunks(chunks), mode="r|") as archive:
            if hashed:
                unpacked = unpack(archive, dest, max_bytes=pool.artifacts_max_bytes, what="the artifacts")
                files, total = len(unpacked.files), unpacked.total
            else:
                archive.extractall(dest, filter="data")
        done = time.perf_counter()
    finally:
        api.remove_container(cid, force=True, v=True)
    if not hashed:
        kept = [p for p in (dest / "out").iterdir() if p.is_file()]
        files, total = len(kept), sum(p.stat().st_size for p in kept)
    assert files == payload.files and total == payload.total, (files, total)
    shutil.rmtree(dest)
    assert watch.at is not None
    return Timing(done - watch.at, exited - watch.at)


def sha256_check() -> None:
    """unpack's digests are the files' sha256 (a sanity check of the like-for-like side, not timed)."""
    buf = io.BytesIO()
    body = secrets.token_bytes(3 * MiB + 7)
    with tarfile.open(fileobj=buf, mode="w") as tar:
        entry = tarfile.TarInfo("out/x")
        entry.size = len(body)
        tar.addfile(entry, io.BytesIO(body))
    buf.seek(0)
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(fileobj=buf, mode="r|") as archive:
        got = unpack(archive, Path(tmp) / "d", max_bytes=1 << 30, what="check")
    assert got.files[0].sha256 == hashlib.sha256(body).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (each: every side, every size)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    parser.add_argument("--mb", type=int, nargs="+", default=[64, 256], help="payload sizes, MiB")
    parser.add_argument("--files", type=int, default=64, help="files per payload")
    parser.add_argument("--image", default=TEST_IMAGE)
    args = parser.parse_args()
    payloads = [Payload(mib, args.files) for mib in args.mb]
    client = docker.from_env(timeout=600)
    api = client.api
    controller_id = new_controller_id()
    pool = PoolConfig(image=args.image, memory="2g", workspace_size="2g")
    sha256_check()
    print(machine_line())
    print(
        f"controller_id={controller_id} image={args.image} pool: memory 2g, workspace 2g, cpus {pool.cpus}, "
        f"artifacts_max_bytes {pool.artifacts_max_bytes}; payloads: {', '.join(p.label() for p in payloads)}"
    )
    seen: dict[tuple[int, str], list[Timing]] = {(p.mib, s): [] for p in payloads for s in SIDES}
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bench-artifacts-"))
    try:
        for n in range(args.warmup + args.rounds):
            for payload in payloads:
                order = SIDES[n % len(SIDES) :] + SIDES[: n % len(SIDES)]
                for side in order:
                    if side == "product":
                        timing = run_product(api, controller_id, pool, payload, n, work)
                    else:
                        timing = run_docker_cp(
                            api, controller_id, pool, payload, n, work, hashed=side == "docker cp + sha256"
                        )
                    if n >= args.warmup:
                        seen[(payload.mib, side)].append(timing)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        check_no_leftovers(client, controller_id)
        client.close()
    argv = ["--rounds", str(args.rounds), "--warmup", str(args.warmup), "--files", str(args.files)]
    print(reproduce_line("bench/bench_artifacts.py", [*argv, "--mb", *map(str, args.mb)]))
    print(
        f"MARK-DONE on stdout -> files on the host's disk, ms; MiB/s = payload / median time; ratio = product time / "
        f"this side's time (>1: the product is slower); n={args.rounds} rounds after {args.warmup} warm-up, "
        f"{time.monotonic() - started:.0f} s in all"
    )
    rows, phases = [], []
    for payload in payloads:
        product = [t.total for t in seen[(payload.mib, "product")]]
        for side in SIDES:
            times = [t.total for t in seen[(payload.mib, side)]]
            ms = [t * 1000 for t in times]
            ratios = [a / b for a, b in zip(product, times, strict=True)]
            is_product = side == "product"
            rows.append(
                [
                    f"{payload.label()}: {side}",
                    median(ms),
                    min(ms),
                    max(ms),
                    payload.total / MiB / median(times),
                    "" if is_product else f"{median(product) / median(times):.2f}x",
                    "" if is_product else f"{median(ratios):.2f}x",
                ]
            )
            exits = [t.to_exit * 1000 for t in seen[(payload.mib, side)]]
            rest = [(t.total - t.to_exit) * 1000 for t in seen[(payload.mib, side)]]
            phases.append([f"{payload.label()}: {side}", median(exits), median(rest)])
    print(table(["", "median", "min", "max", "MiB/s", "ratio of medians", "median per-round ratio"], rows))
    print("phases, median ms")
    print(table(["", "MARK-DONE -> exit seen", "exit -> files on disk"], phases))


if __name__ == "__main__":
    main()

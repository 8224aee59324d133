"""What goes into a job's /workspace besides its commands, and what comes out of it: the source tree the
controller fetched and verified (checkout/), a restored cache, then the artifacts and the cache to save. All of it
crosses the container boundary the way the script does -- in over stdin (one tar stream unpacked before the
commands), out over the side channel (runtime/side_channel.py) -- so a job needs no network to get its source and
Docker's archive API (blind to tmpfs mounts) is not needed. `Workspaces.prepare` runs before any container exists,
so a commit the remote does not have fails the job before one starts."""

from __future__ import annotations

import contextlib
import logging
import secrets
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from orchestrator.artifacts.store import ArtifactError, ArtifactStore, Manifest
from orchestrator.caches.store import CacheError, CacheHit, CacheStore, cache_key
from orchestrator.checkout.errors import CheckoutError
from orchestrator.config import Config
from orchestrator.jobs.states import Job
from orchestrator.runtime.container_spec import WorkspaceIO
from orchestrator.runtime.side_channel import SideChannel, iter_file, members_end, open_section, sections

log = logging.getLogger(__name__)

_SPOOL_SLACK = 1024 * 1024  # header lines and tar framing on top of the files
_KEY_FILE_MAX = 16 * 1024 * 1024


class WorkspaceError(Exception):
    """The job cannot run or cannot end as asked (checkout refused, artifacts not kept): its reason."""


class PreparedTree(Protocol):
    """A fetched and verified commit as a tar archive of its tree (checkout/checkouts.py)."""

    @property
    def archive(self) -> Path: ...
    @property
    def size(self) -> int: ...
    @property
    def commit(self) -> str: ...
    @property
    def remote(self) -> str: ...
    @property
    def submodules(self) -> Sequence[Any]: ...  # each with path, repository, commit, remote
    def remove(self) -> None: ...


class Checkouts(Protocol):
    async def prepare(self, source: str, repository: str, sha: str, *, submodules: bool | None = None) -> PreparedTree:
        """Raises checkout.errors.CheckoutError, whose text is the job's reason."""
        ...


@dataclass
class Collected:
    notices: list[str] = field(default_factory=list)
    error: str | None = None


class Workspace:
    """One job's workspace traffic; made by `Workspaces.prepare`, used by the job runner."""

    def __init__(
        self,
        job: Job,
        *,
        io: WorkspaceIO,
        spool: Path,
        spool_max: int,
        artifacts: ArtifactStore,
        caches: CacheStore,
        artifacts_max: int,
        cache_max: int,
        tree: PreparedTree | None,
        restored: CacheHit | None,
        key: str | None,
        notices: list[str],
    ) -> None:
        self.job = job
        self.io = io
        self.tree = tree
        self.restored = restored
        self.key = key
        self.notices = notices  # for the log, before the commands' output
        self.manifest: Manifest | None = None
        self._spool = spool
        self._spool_max = spool_max
        self._artifacts = artifacts
        self._caches = caches
        self._artifacts_max = artifacts_max
        self._cache_max = cache_max
        self.side: SideChannel | None = None

    def open_side(self, to_log: Any) -> SideChannel:
        self.side = SideChannel(self.io.nonce, self._spool, self._spool_max, to_log)
        return self.side

    def inbound(self) -> Iterator[bytes]:
        """The archive unpacked into /workspace: the tree (without its end-of-archive blocks when a cache follows,
        so the two read as one archive), then the cache entry."""
        if self.tree is not None:
            end = self.tree.size
            if self.restored is not None:
                with self.tree.archive.open("rb") as f:
                    end = members_end(f, 0, self.tree.size)
            yield from iter_file(self.tree.archive, 0, end)
        if self.restored is not None:
            yield from iter_file(self.restored.path, 0, self.restored.size)

    def collect(self, succeeded: bool, now: float) -> Collected:
        """After the container exited: keeps the artifacts and the cache it handed back (blocking)."""
        done = Collected()
        spec = self.job.spec
        wants_artifacts = bool(self.io.artifacts) and (succeeded or self.io.artifacts_always)
        wants_cache = bool(self.io.cache) and succeeded
        if not (wants_artifacts or wants_cache):
            return done
        spool = self.side.spool if self.side is not None else None
        if spool is None:
            if wants_artifacts:
                done.error = "artifacts: the container handed none back (did the job's script end early?)"
            return done
        with spool.open("rb") as data:
            found = {s.kind: s for s in sections(data, self.io.nonce)}
            section = found.get("artifacts")
            if wants_artifacts:
                if section is None or not section.complete:
                    overflow = self.side is not None and self.side.overflowed
                    done.error = (
                        f"artifacts: larger than {self._artifacts_max} bytes"
                        if overflow
                        else "artifacts: the container's archive was cut short"
                    )
                else:
                    try:
                        with open_section(data, section) as archive:
                            assert spec.artifacts is not None
                            self.manifest = self._artifacts.save(
                                self.job.id, archive, max_bytes=self._artifacts_max, reports=spec.artifacts.reports,
                                now=now,
                            )  # fmt: skip
                    except (ArtifactError, tarfile.TarError) as exc:
                        done.error = str(exc) if isinstance(exc, ArtifactError) else f"artifacts: {exc}"
                    else:
                        m = self.manifest
                        done.notices.append(f"artifacts: {len(m.files)} files, {m.total_bytes} bytes kept")
                        done.notices += [f"artifacts: {refusal}; left out" for refusal in m.refused]
                        done.notices += [f"artifacts: {problem}" for problem in m.problems]
            cache = found.get("cache")
            if wants_cache and self.key is not None:
                if cache is None or not cache.complete or cache.start == cache.end:
                    done.notices.append(f"cache {self.key}: nothing to save")
                else:
                    try:
                        size = self._caches.save(
                            spec.repository, spec.ref, self.key, iter_file(spool, cache.start, cache.end),
                            max_bytes=self._cache_max,
                        )  # fmt: skip
                        done.notices.append(f"cache {self.key}: saved for {spec.ref} ({size} bytes)")
                    except CacheError as exc:
                        done.notices.append(str(exc))
        return done

    def facts(self) -> dict[str, Any]:
        """What the attestation records of it (evidence/attestation.py JobFacts)."""
        out: dict[str, Any] = {}
        if self.tree is not None:
            out["checkout"] = {"remote": self.tree.remote, "commit": self.tree.commit}
            out["submodules"] = [
                {"path": m.path, "repository": m.repository, "commit": m.commit, "remote": m.remote}
                for m in self.tree.submodules
            ]
        if self.manifest is not None:
            out["artifacts"] = [{"name": f.name, "sha256": f.sha256, "size": f.size} for f in self.manifest.files]
            out["junit"] = self.manifest.junit
            out["sbom"] = self.manifest.sbom
        return out

    def cleanup(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._spool.unlink()
        if self.tree is not None:
            self.tree.remove()


class Workspaces:
    def __init__(
        self,
        config: Config,
        *,
        artifacts: ArtifactStore,
        caches: CacheStore,
        work_dir: Path,
        checkouts: Checkouts | None = None,
    ) -> None:
        self.config = config
        self.artifacts = artifacts
        self.caches = caches
        self.checkouts = checkouts
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in work_dir.glob("*.side"):  # spools of jobs a previous process did not finish
            stale.unlink(missing_ok=True)

    async def prepare(self, job: Job) -> Workspace | None:
        """None when the job needs nothing of it. Raises WorkspaceError."""
        spec = job.spec
        source = self.config.sources.get(job.source)
        checkout = spec.checkout and spec.runner is None and source is not None and source.checkout is not None
        if not (checkout or spec.artifacts or spec.cache):
            return None
        pool = self.config.pools[job.pool]
        tree: PreparedTree | None = None
        notices: list[str] = []
        if checkout:
            if self.checkouts is None:
                raise WorkspaceError(
                    f"checkout: sources.{job.source}.checkout is configured but this controller has none"
                )
            try:
                tree = await self.checkouts.prepare(
                    job.source, spec.repository, spec.sha, submodules=True if spec.submodules else None
                )
            except CheckoutError as exc:
                raise WorkspaceError(f"checkout: {exc}") from None
            notices.append(f"checkout: {spec.repository} at {tree.commit} from {tree.remote} ({tree.size} bytes)")
        restored = key = None
        try:
            if spec.cache is not None:
                key = spec.cache.key
                if spec.cache.key_files:
                    if tree is None:
                        raise WorkspaceError(
                            f"cache.key_files needs a source checkout (sources.{job.source}.checkout is not configured "
                            "or the job has checkout: false)"
                        )
                    key = cache_key(key, _read_members(tree.archive, spec.cache.key_files))
                restored = self.caches.lookup(spec.repository, spec.ref, key)
                notices.append(
                    f"cache {key}: restored from {restored.ref} ({restored.size} bytes)"
                    if restored is not None
                    else f"cache {key}: none yet for {spec.ref}"
                )
        except BaseException:
            if tree is not None:
                tree.remove()
            raise
        artifacts_max = pool.artifacts_max_bytes
        patterns: tuple[str, ...] = ()
        always = False
        if spec.artifacts is not None:
            artifacts_max = min(spec.artifacts.max_bytes or artifacts_max, artifacts_max)
            reports = [r for r in (spec.artifacts.reports.junit, spec.artifacts.reports.sbom) if r is not None]
            patterns = tuple(dict.fromkeys([*spec.artifacts.paths, *reports]))
            always = spec.artifacts.when == "always"
        inbound = (tree.size if tree is not None else 0) + (restored.size if restored is not None else 0)
        if tree is not None and restored is not None:
            with tree.archive.open("rb") as f:
                inbound -= tree.size - members_end(f, 0, tree.size)
        io = WorkspaceIO(
            inbound_bytes=inbound,
            nonce=secrets.token_hex(16),
            artifacts=patterns,
            artifacts_always=always,
            cache=tuple(spec.cache.paths) if spec.cache is not None else (),
        )
        return Workspace(
            job,
            io=io,
            spool=self.work_dir / f"{job.id}-a{job.attempt}.side",
            spool_max=artifacts_max + pool.cache_max_bytes + _SPOOL_SLACK,
            artifacts=self.artifacts,
            caches=self.caches,
            artifacts_max=artifacts_max,
            cache_max=pool.cache_max_bytes,
            tree=tree,
            restored=restored,
            key=key,
            notices=notices,
        )


def _read_members(tar_path: Path, names: list[str]) -> list[tuple[str, bytes | None]]:
    """The contents of the named files of a checkout archive (None: not in it), for a cache key."""
    wanted = {name.removeprefix("./") for name in names}
    found: dict[str, bytes] = {}
    with tarfile.open(tar_path, mode="r:") as archive:
        for member in archive:
            name = member.name.removeprefix("./")
            if name in wanted and member.isreg() and member.size <= _KEY_FILE_MAX:
                source = archive.extractfile(member)
                if source is not None:
                    found[name] = source.read()
    return [(name, found.get(name.removeprefix("./"))) for name in names]

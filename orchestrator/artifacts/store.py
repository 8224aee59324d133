"""A job's artifacts under the data dir: `artifacts/<job id>/files/...` and `manifest.json` (name, size, sha256 of
each file; the reports' totals and digest). A job's artifacts appear whole or not at all: they are unpacked into a
temporary directory that is renamed into place once complete, and removed if anything fails (a full disk
included). Kept `retention_days`, then removed by `expire`."""

from __future__ import annotations

import contextlib
import errno
import json
import secrets
import shutil
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.artifacts.reports import ReportError, TestTotals, junit_totals, sbom_info
from orchestrator.artifacts.unpack import UnpackError, member_name, unpack
from orchestrator.jobs.spec import ArtifactReports, checked_job_id
from orchestrator.platform.files import fsync_dir, write_atomic

MANIFEST = "manifest.json"


class ArtifactError(Exception):
    """The job's artifacts could not be kept; the message is the job's reason."""


@dataclass(frozen=True)
class Artifact:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    job_id: str
    created_at: float
    files: list[Artifact]
    total_bytes: int
    refused: list[str] = field(default_factory=list)
    junit: dict[str, Any] | None = None  # {"name", "sha256", "tests", "passed", "failed", "skipped"}
    sbom: dict[str, Any] | None = None  # {"name", "sha256", "format", "spec_version"}
    problems: list[str] = field(default_factory=list)  # reports declared but missing or malformed

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        files = [Artifact(**f) for f in data.get("files", [])]
        return cls(**{**data, "files": files})

    def find(self, name: str) -> Artifact | None:
        return next((f for f in self.files if f.name == name), None)


class ArtifactStore:
    def __init__(self, directory: Path, *, retention_s: float | None = None) -> None:
        self.directory = directory
        self.retention_s = retention_s
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _dir(self, job_id: str) -> Path:
        return self.directory / checked_job_id(job_id)

    def save(
        self, job_id: str, archive: tarfile.TarFile, *, max_bytes: int, reports: ArtifactReports, now: float
    ) -> Manifest:
        """Unpacks the archive as the job's artifacts (blocking: run it on a thread). Raises ArtifactError."""
        tmp = self.directory / f".tmp-{checked_job_id(job_id)}-{secrets.token_hex(4)}"
        try:
            unpacked = unpack(archive, tmp / "files", max_bytes=max_bytes, what="the artifacts")
            for directory in {(tmp / "files" / f.name).parent for f in unpacked.files} | {tmp / "files"}:
                fsync_dir(directory)
            files = [Artifact(f.name, f.size, f.sha256) for f in unpacked.files]
            manifest = Manifest(job_id, now, files, unpacked.total, refused=unpacked.refused)
            manifest = self._with_reports(manifest, tmp / "files", reports)
            write_atomic(tmp / MANIFEST, json.dumps(manifest.to_json(), indent=1).encode(), mode=0o600)
            final = self._dir(job_id)
            if final.exists():  # an earlier attempt of the same job
                shutil.rmtree(final)
            tmp.rename(final)
            fsync_dir(self.directory)
            return manifest
        except UnpackError as exc:
            raise ArtifactError(str(exc)) from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ArtifactError(f"artifacts: the disk of the data dir {self.directory} is full") from None
            raise ArtifactError(f"artifacts could not be stored: {exc.strerror or exc}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(tmp)

    @staticmethod
    def _with_reports(manifest: Manifest, files: Path, reports: ArtifactReports) -> Manifest:
        problems: list[str] = []
        junit = sbom = None
        if reports.junit is not None:
            found = manifest.find(member_name(reports.junit) or "")
            if found is None:
                problems.append(f"JUnit report {reports.junit} was not produced")
            else:
                try:
                    totals: TestTotals = junit_totals((files / found.name).read_bytes(), found.name)
                    junit = {"name": found.name, "sha256": found.sha256, **totals.as_dict()}
                except ReportError as exc:
                    problems.append(str(exc))
        if reports.sbom is not None:
            found = manifest.find(member_name(reports.sbom) or "")
            if found is None:
                problems.append(f"SBOM {reports.sbom} was not produced")
            else:
                try:
                    info = sbom_info((files / found.name).read_bytes(), found.name)
                    sbom = {"name": found.name, "sha256": info.sha256, "format": info.format,
                            "spec_version": info.spec_version}  # fmt: skip
                except ReportError as exc:
                    problems.append(str(exc))
        return Manifest(**{**manifest.__dict__, "junit": junit, "sbom": sbom, "problems": problems})

    def manifest(self, job_id: str) -> Manifest | None:
        try:
            return Manifest.from_json(json.loads((self._dir(job_id) / MANIFEST).read_bytes()))
        except FileNotFoundError:
            return None

    def file(self, job_id: str, name: str) -> tuple[Artifact, Path] | None:
        """The artifact named `name` and where it is, if the job's manifest lists it (names are never joined to a
        path unless they are in the manifest)."""
        manifest = self.manifest(job_id)
        found = manifest.find(name) if manifest is not None else None
        if found is None:
            return None
        return found, self._dir(job_id) / "files" / found.name

    def expire(self, now: float | None = None) -> int:
        """Removes the artifacts of jobs older than the retention; returns how many jobs' were removed."""
        if self.retention_s is None:
            return 0
        cutoff = (now if now is not None else time.time()) - self.retention_s
        removed = 0
        for entry in self.directory.iterdir():
            if entry.name.startswith(".tmp-"):
                if entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)
                continue
            try:
                created = json.loads((entry / MANIFEST).read_bytes()).get("created_at", 0)
            except (OSError, ValueError):
                continue
            if created < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed

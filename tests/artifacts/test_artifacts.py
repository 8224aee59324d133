"""Artifacts and caches without Docker: what a container's tar stream may put on the controller's disk
(artifacts/unpack.py), the reports (artifacts/reports.py), the store's all-or-nothing writes and retention, and the
cache's scoping and eviction (caches/store.py)."""

from __future__ import annotations

import errno
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from orchestrator.artifacts.reports import ReportError, junit_totals, sbom_info
from orchestrator.artifacts.store import ArtifactError, ArtifactStore
from orchestrator.artifacts.unpack import UnpackError, member_name, unpack
from orchestrator.caches.store import CacheError, CacheStore, cache_key, read_order
from orchestrator.jobs.spec import ArtifactReports


def archive(members: list[tuple[str, Any]]) -> tarfile.TarFile:
    """A tar stream (as the container sends it) of (name, bytes | "dir" | ("sym", target) | ("hard", target))."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, what in members:
            info = tarfile.TarInfo(name)
            if what == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(what, tuple):
                info.type = tarfile.SYMTYPE if what[0] == "sym" else tarfile.LNKTYPE
                info.linkname = what[1]
                tar.addfile(info)
            else:
                info.size = len(what)
                info.mode = 0o755 if name.endswith(".sh") else 0o644
                tar.addfile(info, io.BytesIO(what))
    buf.seek(0)
    return tarfile.open(fileobj=buf, mode="r|")


def test_member_names_never_leave_the_workspace() -> None:
    assert member_name("./dist/a") == "dist/a" and member_name("dist/../a") == "a" and member_name(".") == ""
    for bad in ("/etc/passwd", "../x", "a/../../x", "x\0y"):
        assert member_name(bad) is None, bad


def test_unpack_takes_files_and_refuses_links_and_escapes(tmp_path: Path) -> None:
    done = unpack(
        archive([("dist", "dir"), ("dist/a.sh", b"#!/bin/sh\n"), ("dist/l", ("sym", "/etc/passwd")),
                 ("dist/h", ("hard", "dist/a.sh")), ("../../evil", b"x"), ("/abs", b"y")]),
        tmp_path / "out", max_bytes=1000, what="the artifacts",
    )  # fmt: skip
    assert [f.name for f in done.files] == ["dist/a.sh"]
    assert sorted(done.refused) == [
        "../../evil: leaves the workspace", "/abs: leaves the workspace", "dist/h: a hard link",
        "dist/l: a symbolic link",
    ]  # fmt: skip
    assert os.access(tmp_path / "out" / "dist" / "a.sh", os.X_OK)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "out" / "dist" / "l").exists()


def test_unpack_stops_at_the_cap(tmp_path: Path) -> None:
    with pytest.raises(UnpackError, match="exceed 100 bytes"):
        unpack(archive([("a", b"x" * 60), ("b", b"y" * 60)]), tmp_path / "o", max_bytes=100, what="the artifacts")


def test_junit_totals_and_refusals() -> None:
    xml = b"""<testsuite><testcase name="a"/><testcase name="b"><error/></testcase>
              <testcase name="c"><failure/></testcase><testcase name="d"><skipped/></testcase></testsuite>"""
    assert junit_totals(xml, "r.xml").as_dict() == {"tests": 4, "passed": 1, "failed": 2, "skipped": 1}
    with pytest.raises(ReportError, match="not valid XML"):
        junit_totals(b"<testsuite>", "r.xml")
    with pytest.raises(ReportError, match="root element"):
        junit_totals(b"<html/>", "r.xml")
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><testsuite>&b;</testsuite>'
    with pytest.raises(ReportError):
        junit_totals(bomb, "bomb.xml")


def test_sbom_formats() -> None:
    assert sbom_info(b'{"bomFormat": "CycloneDX", "specVersion": "1.6"}', "s").format == "CycloneDX"
    spdx = sbom_info(b'{"spdxVersion": "SPDX-2.3", "name": "x"}', "s")
    assert (spdx.format, spdx.spec_version) == ("SPDX", "2.3")
    with pytest.raises(ReportError, match="neither CycloneDX"):
        sbom_info(b'{"hello": 1}', "s")


def test_store_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ArtifactStore(tmp_path / "artifacts", retention_s=3600)
    reports = ArtifactReports(junit="t.xml")
    manifest = store.save("job-1", archive([("a.txt", b"A"), ("t.xml", b"<testsuite/>")]), max_bytes=100,
                          reports=reports, now=1000.0)  # fmt: skip
    assert [f.name for f in manifest.files] == ["a.txt", "t.xml"] and manifest.junit is not None
    assert store.manifest("job-1") == manifest
    found = store.file("job-1", "a.txt")
    assert found is not None and found[1].read_bytes() == b"A"
    assert store.file("job-1", "../../jobs.sqlite3") is None

    with pytest.raises(ArtifactError, match="exceed"):
        store.save("job-2", archive([("a", b"x" * 200)]), max_bytes=100, reports=ArtifactReports(), now=1000.0)
    assert store.manifest("job-2") is None and sorted(p.name for p in store.directory.iterdir()) == ["job-1"]

    def full(*args: Any, **kw: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("orchestrator.artifacts.store.write_atomic", full)
    with pytest.raises(ArtifactError, match="is full"):
        store.save("job-3", archive([("a", b"x")]), max_bytes=100, reports=ArtifactReports(), now=1000.0)
    monkeypatch.undo()
    assert sorted(p.name for p in store.directory.iterdir()) == ["job-1"]
    assert store.expire(now=1000.0 + 3599) == 0 and store.expire(now=1000.0 + 3601) == 1
    assert store.manifest("job-1") is None


def test_a_declared_report_that_is_missing_or_malformed_is_a_problem(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    manifest = store.save("j", archive([("sbom.json", b"{}")]), max_bytes=100,
                          reports=ArtifactReports(junit="t.xml", sbom="sbom.json"), now=0.0)  # fmt: skip
    assert manifest.junit is None and manifest.sbom is None
    assert manifest.problems == [
        "JUnit report t.xml was not produced",
        "SBOM sbom.json is neither CycloneDX JSON (bomFormat) nor SPDX JSON (spdxVersion)",
    ]


def tar_chunks(members: list[tuple[str, Any]]) -> list[bytes]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, what in members:
            info = tarfile.TarInfo(name)
            if isinstance(what, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, what[1]
                tar.addfile(info)
            else:
                info.size = len(what)
                tar.addfile(info, io.BytesIO(what))
    return [buf.getvalue()]


def test_cache_key_and_read_order() -> None:
    assert cache_key("deps", []) == "deps"
    a = cache_key("deps", [("lock", b"v1")])
    assert a.startswith("deps-") and a != cache_key("deps", [("lock", b"v2")]) != cache_key("deps", [("lock", None)])
    assert read_order("refs/heads/x", ["refs/heads/main"]) == ["refs/heads/x", "refs/heads/main"]
    assert read_order("refs/heads/main", ["refs/heads/main", "main"]) == ["refs/heads/main", "main"]


def test_cache_scoping_checks_and_lru(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c", max_total_bytes=30_000, fallback_refs=["refs/heads/main"])
    store.save("o/app", "refs/heads/main", "k", tar_chunks([("deps/a", b"main"), ("deps/l", ("sym", "/usr/bin"))]),
               max_bytes=10_000)  # fmt: skip
    hit = store.lookup("o/app", "refs/heads/feature", "k")
    assert hit is not None and hit.ref == "refs/heads/main"
    assert store.lookup("o/other", "refs/heads/main", "k") is None
    with pytest.raises(CacheError, match="outside the workspace"):
        store.save("o/app", "refs/heads/x", "k", tar_chunks([("../x", b"1")]), max_bytes=10_000)
    with pytest.raises(CacheError, match="larger than"):
        store.save("o/app", "refs/heads/x", "k", tar_chunks([("a", b"1" * 20_000)]), max_bytes=10_000)
    assert store.lookup("o/app", "refs/heads/x", "k").ref == "refs/heads/main"  # type: ignore[union-attr]
    meta = json.loads(next(iter((tmp_path / "c").glob("*/*/k.json"))).read_text())
    assert set(meta) == {"repository", "ref", "key", "size"}


def test_cache_eviction_is_least_recently_used(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c", max_total_bytes=25_000, fallback_refs=[])
    for n, ref in enumerate(("refs/heads/b1", "refs/heads/b2")):
        store.save("o/app", ref, "k", tar_chunks([("a", b"1" * 8000)]), max_bytes=10_000)
        hit = store.lookup("o/app", ref, "k")
        assert hit is not None
        os.utime(hit.path, (1_000_000 + n, 1_000_000 + n))  # b1 older than b2
    assert store.lookup("o/app", "refs/heads/b1", "k") is not None  # b1 used now: b2 is the least recent
    store.save("o/app", "refs/heads/b3", "k", tar_chunks([("a", b"1" * 8000)]), max_bytes=10_000)
    kept = [ref for ref in ("refs/heads/b1", "refs/heads/b2", "refs/heads/b3") if store.lookup("o/app", ref, "k")]
    assert kept == ["refs/heads/b1", "refs/heads/b3"] and store.total_bytes() <= 25_000

"""Artifacts and caches on the real Docker engine: files leave the container over its side channel (stderr,
which only the job script holds), the reports are read into the attestation, `attest verify --artifact` accepts
the artifact, and caches are scoped to repository and ref with the default branch as the fallback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import docker
import pytest

from orchestrator.evidence.attestation import AttestationError, verify_file

from conftest import RunningController, job_spec, managed_containers

pytestmark = pytest.mark.docker

JUNIT = (
    '<?xml version="1.0"?><testsuites><testsuite name="unit">'
    '<testcase name="a"/><testcase name="b"><failure message="x"/></testcase>'
    '<testcase name="c"><skipped/></testcase><testcase name="d"/></testsuite></testsuites>'
)
SBOM = json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1, "components": []})


def write(path: str, text: str) -> str:
    return f"mkdir -p $(dirname {path}) && printf '%s' '{text}' > {path}"


async def test_artifacts_reports_and_attestation(
    controller_factory: Any, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    ctl: RunningController = await controller_factory()
    payload = "built " * 1000
    spec = job_spec(
        commands=[
            write("dist/app.txt", payload),
            "head -c 300000 /dev/urandom > dist/blob.bin",
            write("reports/junit.xml", JUNIT),
            write("sbom.json", SBOM),
            "ln -s /etc/passwd dist/passwd-link",
            "ln -s /etc dist2",
            "echo done",
        ],
        artifacts={"paths": ["dist", "dist2/passwd", "missing/*"],
                   "reports": {"junit": "reports/junit.xml", "sbom": "sbom.json"}},
    )  # fmt: skip
    assert (await ctl.post_webhook(spec))[0] == 202
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "succeeded", job
    log = (await ctl.logs(spec["id"])).decode()
    assert "artifacts: dist2/passwd leaves /workspace; left out" in log
    assert "artifacts: nothing matches missing/*" in log
    assert "dist/passwd-link: a symbolic link; left out" in log
    status, manifest = await ctl.api("GET", f"/api/v1/jobs/{spec['id']}/artifacts", token=ctl.viewer_token)
    assert status == 200, manifest
    names = {f["name"]: f for f in manifest["files"]}
    assert set(names) == {"dist/app.txt", "dist/blob.bin", "reports/junit.xml", "sbom.json"}
    assert names["dist/app.txt"]["sha256"] == hashlib.sha256(payload.encode()).hexdigest()
    assert manifest["junit"] == {"name": "reports/junit.xml", "sha256": names["reports/junit.xml"]["sha256"],
                                 "tests": 4, "passed": 2, "failed": 1, "skipped": 1}  # fmt: skip
    assert manifest["sbom"]["format"] == "CycloneDX" and manifest["sbom"]["spec_version"] == "1.6"
    status, body = await ctl.api("GET", f"/api/v1/jobs/{spec['id']}/artifacts/dist/blob.bin", token=ctl.viewer_token)
    assert status == 200 and hashlib.sha256(body).hexdigest() == names["dist/blob.bin"]["sha256"]
    assert (await ctl.api("GET", f"/api/v1/jobs/{spec['id']}/artifacts/../jobs.sqlite3"))[0] == 404

    # The attestation names every artifact; `attest verify --artifact` accepts exactly those files.
    status, envelope = await ctl.api("GET", f"/api/v1/jobs/{spec['id']}/attestation")
    att = tmp_path / "att.json"
    att.write_bytes(envelope if isinstance(envelope, bytes) else json.dumps(envelope).encode())
    pub = tmp_path / "att.pub"
    pub.write_bytes((await ctl.api("GET", "/api/v1/attestation-key"))[1])
    blob = tmp_path / "blob.bin"
    blob.write_bytes(body)
    attested = verify_file(att, pub, artifact=blob, expect_source="test", expect_ref="refs/heads/main")
    assert attested.artifacts[names["dist/blob.bin"]["sha256"]] == "dist/blob.bin"
    assert attested.junit is not None and attested.junit["failed"] == 1
    other = tmp_path / "other.bin"
    other.write_bytes(b"not built here")
    with pytest.raises(AttestationError, match="is not a subject"):
        verify_file(att, pub, artifact=other)
    with pytest.raises(AttestationError, match="did not fetch commit"):
        verify_file(att, pub, require_checkout=True)  # no checkout configured: the sha is only claimed
    with pytest.raises(AttestationError, match="source mismatch"):
        verify_file(att, pub, expect_source="elsewhere")

    # `orchestrator jobs artifacts ID --download DIR`, as a deploy step would fetch them.
    token = tmp_path / "token"
    token.write_text(ctl.viewer_token)
    cli = [sys.executable, "-m", "orchestrator.cli", "jobs", "--url", ctl.url, "--token-file", str(token)]
    listed = await asyncio.to_thread(subprocess.run, [*cli, "artifacts", spec["id"]], capture_output=True, text=True)
    assert listed.returncode == 0 and "dist/blob.bin" in listed.stdout and "symbolic link" in listed.stdout
    out = tmp_path / "download"
    fetched = await asyncio.to_thread(
        subprocess.run, [*cli, "artifacts", spec["id"], "--download", str(out)], capture_output=True, text=True
    )
    assert fetched.returncode == 0, fetched.stderr
    assert (out / "dist" / "blob.bin").read_bytes() == body and (out / "dist" / "app.txt").read_text() == payload
    assert managed_containers(docker_client, ctl.controller_id) == []


async def test_artifacts_of_a_failed_job_only_when_always(controller_factory: Any) -> None:
    ctl: RunningController = await controller_factory()
    kept = job_spec(commands=[write("out.log", "why it failed"), "exit 4"],
                    artifacts={"paths": ["out.log"], "when": "always"})  # fmt: skip
    dropped = job_spec(commands=[write("out.log", "x"), "exit 4"], artifacts={"paths": ["out.log"]})
    for spec in (kept, dropped):
        assert (await ctl.post_webhook(spec))[0] == 202
    assert (await ctl.wait_final(kept["id"]))["status"] == "failed"
    assert (await ctl.wait_final(dropped["id"]))["status"] == "failed"
    status, manifest = await ctl.api("GET", f"/api/v1/jobs/{kept['id']}/artifacts")
    assert status == 200 and [f["name"] for f in manifest["files"]] == ["out.log"]
    assert (await ctl.api("GET", f"/api/v1/jobs/{dropped['id']}/artifacts"))[0] == 404


async def test_artifacts_over_the_cap_are_an_error_and_nothing_is_kept(controller_factory: Any) -> None:
    ctl: RunningController = await controller_factory()
    spec = job_spec(commands=["head -c 200000 /dev/zero > big"], artifacts={"paths": ["big"], "max_bytes": 100000})
    assert (await ctl.post_webhook(spec))[0] == 202
    job = await ctl.wait_final(spec["id"])
    assert job["status"] == "error" and "artifacts" in job["reason"] and "100000 bytes" in job["reason"], job
    assert (await ctl.api("GET", f"/api/v1/jobs/{spec['id']}/artifacts"))[0] == 404


async def test_caches_are_scoped_to_the_ref_with_the_default_branch_as_fallback(controller_factory: Any) -> None:
    ctl: RunningController = await controller_factory()

    async def run(ref: str, write_value: str | None, repository: str = "example/app") -> str:
        commands = ["cat deps/value 2>/dev/null || echo none", "echo seen=$(cat deps/value 2>/dev/null || echo none)"]
        if write_value is not None:
            commands.append(f"mkdir -p deps && echo {write_value} > deps/value")
        spec = job_spec(ref=ref, repository=repository, commands=commands, cache={"key": "deps", "paths": ["deps"]})
        assert (await ctl.post_webhook(spec))[0] == 202
        job = await ctl.wait_final(spec["id"])
        assert job["status"] == "succeeded", job
        log = (await ctl.logs(spec["id"])).decode()
        return next(line for line in log.splitlines() if line.startswith("seen="))

    assert await run("refs/heads/main", "from-main") == "seen=none"
    assert await run("refs/heads/main", None) == "seen=from-main"
    # A branch reads the default branch's cache, writes its own; main never sees the branch's.
    assert await run("refs/heads/feature", "from-feature") == "seen=from-main"
    assert await run("refs/heads/feature", None) == "seen=from-feature"
    assert await run("refs/heads/main", None) == "seen=from-main"
    # Never across repositories.
    assert await run("refs/heads/main", None, repository="example/other") == "seen=none"


# -- the controller's own checkout: a real git smart-HTTP server with a token, a job without network --------------

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "checkout"))
from callback_receiver import Receiver  # noqa: E402
from git_server import Exec, GitHttpServer, Link, SourceRepo  # noqa: E402

GIT_TOKEN = "git-token-" + "5" * 24


async def test_a_job_without_network_builds_its_checked_out_commit(
    controller_factory: Any, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    server = GitHttpServer(tmp_path / "srv", token=GIT_TOKEN)
    await server.start()
    try:
        repo = SourceRepo(tmp_path / "work", tmp_path / "srv" / "acme" / "app.git")
        sha = repo.commit({
            "README": "hello from git\n",
            "build.sh": Exec(b"#!/bin/sh\nset -e\nmkdir -p dist\ncat README > dist/out.txt\necho built\n"),
            "deps.lock": "requests==1\n",
            "docs": Link("README"),
        })  # fmt: skip
        repo.push()
        token_file = tmp_path / "git.token"
        token_file.write_text(GIT_TOKEN + "\n")
        token_file.chmod(0o600)
        callback_secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
        (tmp_path / "callback.secret").write_text(callback_secret)
        (tmp_path / "callback.secret").chmod(0o600)
        receiver = Receiver(callback_secret)
        await receiver.start()
        settings = {
            "sources": {
                "test": {
                    "scheme": "standard-webhooks",
                    "secret_file": str(tmp_path / "webhook.secret"),
                    "checkout": {"remote": server.url + "/{repository}.git", "token_file": str(token_file)},
                    "callbacks": {"url": receiver.url, "secret_file": str(tmp_path / "callback.secret")},
                }
            }
        }
        ctl: RunningController = await controller_factory(settings=settings)  # the pool's network is "none"

        async def run(**spec: Any) -> tuple[dict[str, Any], str]:
            body = job_spec(**{"repository": "acme/app", "sha": sha, **spec})
            assert (await ctl.post_webhook(body))[0] == 202
            job = await ctl.wait_final(body["id"])
            return job, (await ctl.logs(body["id"])).decode()

        body = job_spec(
            repository="acme/app",
            sha=sha,
            commands=["sleep 1", "ls -l", "cat docs", "./build.sh", "mkdir -p deps && echo cached > deps/x",
                      write("junit.xml", JUNIT), write("sbom.json", SBOM)],
            artifacts={"paths": ["dist/out.txt"], "reports": {"junit": "junit.xml", "sbom": "sbom.json"}},
            cache={"key": "deps", "paths": ["deps"], "key_files": ["deps.lock"]},
        )  # fmt: skip
        assert (await ctl.post_webhook(body))[0] == 202
        # While it runs, `docker inspect` shows neither the git credential nor the callback secret.
        for _ in range(100):
            running = managed_containers(docker_client, ctl.controller_id)
            if running:
                inspected = json.dumps(docker_client.api.inspect_container(running[0].id))
                assert GIT_TOKEN not in inspected and callback_secret not in inspected
                assert base64.b64encode(GIT_TOKEN.encode()).decode()[:20] not in inspected
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the job's container was never seen running")
        job = await ctl.wait_final(body["id"])
        log = (await ctl.logs(body["id"])).decode()
        assert job["status"] == "succeeded", (job, log)
        # The receiver got every state of the job, in order, each signature verified (svix and the intake's own).
        await receiver.wait_for(lambda: receiver.states(body["id"])[-1:] == ["succeeded"])
        assert receiver.states(body["id"]) == ["queued", "starting", "running", "succeeded"]
        assert receiver.rejected == 0
        assert f"checkout: acme/app at {sha} from {server.url}/acme/app.git" in log
        assert "hello from git" in log and "built" in log
        assert GIT_TOKEN not in log
        status, manifest = await ctl.api("GET", f"/api/v1/jobs/{job['job_id']}/artifacts")
        assert status == 200 and [f["name"] for f in manifest["files"]] == ["dist/out.txt", "junit.xml", "sbom.json"]
        assert manifest["junit"]["failed"] == 1 and manifest["sbom"]["format"] == "CycloneDX"
        for secret in (GIT_TOKEN, callback_secret):  # nothing secret in the store or the API either
            assert secret.encode() not in (tmp_path / "data" / "jobs.sqlite3").read_bytes()
            assert secret not in json.dumps((await ctl.api("GET", f"/api/v1/jobs/{job['job_id']}"))[1])

        # The attestation records the commit the controller fetched, and where from.
        att, pub = tmp_path / "att.json", tmp_path / "att.pub"
        envelope = (await ctl.api("GET", f"/api/v1/jobs/{job['job_id']}/attestation"))[1]
        att.write_bytes(envelope if isinstance(envelope, bytes) else json.dumps(envelope).encode())
        pub.write_bytes((await ctl.api("GET", "/api/v1/attestation-key"))[1])
        out = tmp_path / "out.txt"
        out.write_text("hello from git\n")
        attested = verify_file(att, pub, require_checkout=True, expect_sha=sha, expect_repository="acme/app",
                               artifact=out)  # fmt: skip
        assert attested.fetched_commit == sha and attested.fetched_from == f"{server.url}/acme/app.git"

        # The second job of the repository: the mirror has the commit, the cache is restored over the tree.
        before = server.fetches
        job, log = await run(commands=["cat deps/x", "cat README"], cache={"key": "deps", "paths": ["deps"],
                                                                          "key_files": ["deps.lock"]})  # fmt: skip
        assert job["status"] == "succeeded" and "cached" in log and "hello from git" in log, log
        assert server.fetches == before

        # checkout: false -- an empty workspace; an unknown commit fails before any container starts.
        job, log = await run(commands=["test ! -e README"], checkout=False)
        assert job["status"] == "succeeded", log
        engine = ctl.controller.engine
        created: list[str] = []
        real_create = engine.create

        async def counting_create(cspec: Any) -> str:
            created.append(cspec.name)
            return await real_create(cspec)

        engine.create = counting_create  # type: ignore[method-assign]
        job, log = await run(commands=["true"], sha="1" * 40)
        assert job["status"] == "error" and "checkout:" in job["reason"] and "1" * 40 in job["reason"], job
        assert job["container_id"] is None and created == []  # refused before any container was made
        assert managed_containers(docker_client, ctl.controller_id) == []
    finally:
        await server.stop()
        if "receiver" in locals():
            await receiver.stop()

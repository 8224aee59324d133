"""Job work on runsc (gVisor) against runc: processes, system calls and tmpfs I/O in the controller's container.

Why: a pool with `runtime = "runsc"` trades speed for isolation, and the README says when that is worth it.
bench_job_latency.py measures what a job's start costs; this measures what its work costs once it runs.

Each round runs one job script in exactly the controller's container (`build_container_spec` of a pool that differs
only by its runtime; the script goes over stdin as the controller sends it) on runc, then on runsc. The script times
five workloads with /proc/uptime (10 ms resolution, so each is sized to take at least ~50 ms on runc) and prints
them. Rounds alternate the two runtimes; medians and the median of per-round ratios are printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import docker
from _support import TEST_IMAGE, check_no_leftovers, machine_line, median, new_controller_id, reproduce_line, table

from orchestrator.config import PoolConfig
from orchestrator.jobs.spec import JobSpec
from orchestrator.runtime.container_spec import build_container_spec, job_script, stdin_payload
from orchestrator.runtime.docker_engine import demultiplex

WORKLOADS = {
    "CPU only (awk loop, 2M iterations)": "awk 'BEGIN { for (i = 0; i < 2000000; i++) s += i * i }'",
    "fork+exec /bin/true, x300": "i=0; while [ $i -lt 300 ]; do /bin/true; i=$((i+1)); done",
    "1-byte read+write, x100000 (dd bs=1)": "dd if=/dev/zero of=/dev/null bs=1 count=100000",
    "256 MiB written to /workspace (dd bs=1M)": "dd if=/dev/zero of=/workspace/big bs=1M count=256; rm /workspace/big",
    "2000 files made, then ls -l": "mkdir d && cd d && i=0; while [ $i -lt 2000 ]; do : > f$i; i=$((i+1)); done;"
    " ls -l >/dev/null; cd .. && rm -r d",
}
# Centiseconds since boot; "1${frac} - 100" keeps a fraction like "09" from being read as an octal number.
PROBE = "now() { read -r up _ < /proc/uptime; echo $(( ${up%.*} * 100 + 1${up#*.} - 100 )); }\n" + "".join(
    f's=$(now); ( {cmd} ) >/dev/null 2>&1; e=$(now); echo "RESULT {n} $(( (e - s) * 10 ))"\n'
    for n, cmd in enumerate(WORKLOADS.values())
)
RUNTIMES = ("runc", "runsc")


def run_probe(api: Any, controller_id: str, pool: PoolConfig, n: int) -> list[float]:
    """Create, attach, start, send the script, read the output, wait, remove: the controller's own sequence."""
    spec = JobSpec(
        id=f"work-{n}", pool="default", repository="example/app", ref="refs/heads/main", sha="0" * 40, commands=[PROBE]
    )
    cspec = build_container_spec(spec, pool, controller_id=controller_id)  # as DockerEngine.create passes it
    cid = api.create_container(host_config=api.create_host_config(**cspec.host), **cspec.create)["Id"]
    try:
        sock = api.attach_socket(cid, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        raw = getattr(sock, "_sock", sock)
        api.start(cid)
        raw.sendall(stdin_payload(job_script([PROBE])))
        frames, out = bytearray(), b""
        while chunk := raw.recv(65536):
            frames += chunk
            out += b"".join(demultiplex(frames))
        status = api.wait(cid, timeout=600)["StatusCode"]
        sock.close()
    finally:
        api.remove_container(cid, force=True, v=True)
    results = {int(f[1]): float(f[2]) for f in (ln.split() for ln in out.decode().splitlines()) if f[:1] == ["RESULT"]}
    assert status == 0 and len(results) == len(WORKLOADS), out
    return [results[i] for i in range(len(WORKLOADS))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (each: runc, then runsc)")
    parser.add_argument("--image", default=TEST_IMAGE)
    args = parser.parse_args()
    client = docker.from_env(timeout=600)
    offered = sorted(client.info().get("Runtimes") or {})
    if "runsc" not in offered:
        sys.exit(f"the Docker engine offers no runsc runtime (has: {', '.join(offered)}); run .ci/setup")
    controller_id = new_controller_id()
    # pids: room for gVisor's own threads, which the host limit counts too; the same for both sides.
    pools = {rt: PoolConfig(image=args.image, memory="512m", pids=1024, runtime=rt) for rt in RUNTIMES}
    print(machine_line())
    print(f"controller_id={controller_id} image={args.image} engine runtimes: {', '.join(offered)}")
    seen: dict[str, list[list[float]]] = {rt: [] for rt in RUNTIMES}
    started = time.monotonic()
    try:
        for n in range(args.rounds):
            for rt in RUNTIMES:
                seen[rt].append(run_probe(client.api, controller_id, pools[rt], n))
    finally:
        check_no_leftovers(client, controller_id)
        client.close()
    print(reproduce_line("bench/bench_runtime_work.py", ["--rounds", str(args.rounds)]))
    print(f"wall time of the job work, ms; n={args.rounds} rounds, {time.monotonic() - started:.0f} s in all")
    rows = []
    for i, name in enumerate(WORKLOADS):
        runc = [r[i] for r in seen["runc"]]
        runsc = [r[i] for r in seen["runsc"]]
        ratios = [b / a for a, b in zip(runc, runsc, strict=True) if a > 0]
        rows.append(
            [name, median(runc), median(runsc), f"{median(runsc) / median(runc):.1f}x", f"{median(ratios):.1f}x"]
        )
    print(table(["", "runc", "runsc", "ratio of medians", "median per-round ratio"], rows))


if __name__ == "__main__":
    main()

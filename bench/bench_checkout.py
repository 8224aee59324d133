"""Source checkout (orchestrator/checkout/): cold and warm mirror against a plain `git clone` of the same repository.

Why: issue 16 asks for the checkout time of a repository of ~50 MB / 5,000 files, cold and warm mirror, against a
plain `git clone` of the same repository in the same run.

Setup: a generated repository (`--files` files of `--file-kb` KiB of random hex text in 50 directories, one
commit) pushed to a bare repository served by git's own smart-HTTP backend (`git http-backend` behind aiohttp,
tests/checkout/git_server.py, this script puts tests/checkout on sys.path) on 127.0.0.1, with basic auth (the
checkout sends its token as the source config says). Each round, in this order:

* clone: `git clone --quiet` (full history, with a work tree), the same token in its environment;
* clone --depth=1: the same, shallow;
* cold: `Checkouts.prepare` with an empty mirror directory: shallow fetch of the sha + the tree as a tar file;
* warm: a new commit on top (`--changed` files rewritten) pushed, then `prepare` of it with the mirror of `cold`;
* hit: `prepare` of the same commit again (nothing fetched: only the tar is written).

Times are wall clock of the whole operation, medians over `--runs` rounds; MB on the wire is what the server's
HTTP answers carried. Ratios are checkout / clone (below 1: the checkout is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _support import machine_line, median, reproduce_line, table

from orchestrator.checkout import Checkouts
from orchestrator.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "checkout"))
from git_server import GIT_ENV, GitHttpServer, SourceRepo

TOKEN = "bench-token-0123456789"


def generate(repo: SourceRepo, files: int, file_kb: int) -> str:
    dirs = 50
    for n in range(files):
        path = repo.work / f"src/d{n % dirs:02d}/file{n:05d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(os.urandom(file_kb * 512).hex())
    return repo.commit({}, message="generated")


async def timed_clone(url: str, dest: Path, *extra: str) -> float:
    header = "Authorization: Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    env = {**GIT_ENV, "HOME": str(dest.parent), "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_COUNT": "1"}
    env |= {"GIT_CONFIG_KEY_0": "http.extraHeader", "GIT_CONFIG_VALUE_0": header}
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec("git", "clone", "--quiet", *extra, url, str(dest), env=env)
    if await proc.wait() != 0:
        raise RuntimeError("git clone failed")
    return time.perf_counter() - start


async def run(args: argparse.Namespace) -> int:
    print(machine_line())
    work = Path(tempfile.mkdtemp(prefix="bench-checkout-"))
    try:
        repo = SourceRepo(work / "work", work / "srv" / "org" / "app.git")
        started = time.perf_counter()
        first = generate(repo, args.files, args.file_kb)
        repo.push()
        tree_mb = sum(p.stat().st_size for p in (repo.work / "src").rglob("*") if p.is_file()) / 1e6
        pack_mb = sum(p.stat().st_size for p in (repo.bare / "objects").rglob("*") if p.is_file()) / 1e6
        print(
            f"repository: {args.files} files, {tree_mb:.1f} MB tree, {pack_mb:.1f} MB on the server "
            f"(generated in {time.perf_counter() - started:.1f} s)"
        )
        token_file = work / "token"
        token_file.write_text(TOKEN)
        token_file.chmod(0o600)
        server = GitHttpServer(work / "srv", token=TOKEN)
        url = await server.start()
        rows: dict[str, list[float]] = {k: [] for k in ("clone", "clone --depth=1", "cold", "warm", "hit")}
        wire: dict[str, list[float]] = {k: [] for k in rows}
        head = first
        for n in range(args.runs):
            mirror_dir = work / f"mirror-{n}"
            config = Config.model_validate(
                {
                    "controller_id": "bench",
                    "data_dir": str(work / "data"),
                    "pools": {"default": {"image": "x"}},
                    "sources": {
                        "bench": {
                            "scheme": "standard-webhooks",
                            "secret_file": "/unused",
                            "checkout": {
                                "remote": url + "/{repository}.git",
                                "token_file": str(token_file),
                                "mirror_dir": str(mirror_dir),
                                "max_bytes": 4 * 1024**3,
                            },
                        }
                    },
                }
            )
            checkouts = Checkouts(config)

            async def measure(kind: str, action: object) -> None:
                server.requests.clear()
                start = time.perf_counter()
                result = await action  # type: ignore[misc]
                elapsed = result if isinstance(result, float) else time.perf_counter() - start
                rows[kind].append(elapsed)
                wire[kind].append(server.bytes_out() / 1e6)
                if not isinstance(result, float):
                    result.remove()

            await measure("clone", timed_clone(f"{url}/org/app.git", work / f"clone-{n}"))
            await measure("clone --depth=1", timed_clone(f"{url}/org/app.git", work / f"shallow-{n}", "--depth=1"))
            await measure("cold", checkouts.prepare("bench", "org/app", head))
            changed = {
                f"src/d{i % 50:02d}/file{i:05d}.txt": os.urandom(args.file_kb * 512).hex() for i in range(args.changed)
            }
            head = repo.commit(changed, message=f"round {n}")
            repo.push()
            await measure("warm", checkouts.prepare("bench", "org/app", head))
            await measure("hit", checkouts.prepare("bench", "org/app", head))
            for d in (work / f"clone-{n}", work / f"shallow-{n}", mirror_dir):
                shutil.rmtree(d)
        await server.stop()
        clone = median(rows["clone"])
        shallow = median(rows["clone --depth=1"])
        print(
            table(
                ["operation", "median s", "min s", "MB on the wire", "/ clone", "/ clone --depth=1"],
                [
                    [k, median(v), min(v), median(wire[k]), median(v) / clone, median(v) / shallow]
                    for k, v in rows.items()
                ],
            )
        )
        print(
            f"ratios: cold = {median(rows['cold']) / clone:.2f}x clone, warm = {median(rows['warm']) / clone:.3f}x "
            f"clone ({args.changed} files changed), hit = {median(rows['hit']) / clone:.3f}x clone"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--file-kb", type=int, default=10, help="size of each file in KiB (random hex text)")
    parser.add_argument("--changed", type=int, default=10, help="files the warm round's new commit rewrites")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    argv = sys.argv[1:]
    code = asyncio.run(run(args))
    print(reproduce_line("bench/bench_checkout.py", argv))
    sys.exit(code)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Builds the runner images the tests and the demo use, without any registry: a busybox root filesystem made
# from Debian's busybox-static is imported as a base image, then images/test-runner/Dockerfile builds FROM it.
# When the host has PostgreSQL's psql (/usr/lib/postgresql/*/bin/psql), a second image, psql-runner, adds that
# binary and every shared library it loads (at their host paths) to the base, for the per-job database user tests
# (tests/integration/test_vault_database.py). test-forge-agent, test-github-runner and test-gitea-runner are the
# forge agent stand-ins (see below). Prints the test-runner image's name on stdout, nothing else.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
base=runner-orchestrator/busybox-base:local
image=${1:-runner-orchestrator/test-runner:local}
psql_image=${PSQL_RUNNER_IMAGE:-runner-orchestrator/psql-runner:local}
busybox=$(command -v busybox || echo /bin/busybox)
scratch=()
cleanup() { if [ ${#scratch[@]} -gt 0 ]; then rm -rf -- "${scratch[@]}"; fi; }
trap cleanup EXIT

if ! docker image inspect "$base" >/dev/null 2>&1; then
  rootfs=$(mktemp -d)
  scratch+=("$rootfs")
  chmod 755 "$rootfs"
  mkdir -p "$rootfs"/{bin,etc,tmp,workspace,run,usr/bin,sbin,usr/sbin}
  cp "$busybox" "$rootfs/bin/busybox"
  # One hard link per applet keeps the image ~1 MB and makes /bin/sh, head, printf … real executables.
  for applet in $("$rootfs/bin/busybox" --list-full); do
    [ -e "$rootfs/$applet" ] || ln "$rootfs/bin/busybox" "$rootfs/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nrunner:x:10001:10001:runner:/workspace:/bin/sh\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nrunner:x:10001:\n' >"$rootfs/etc/group"
  chmod 1777 "$rootfs/tmp"
  tar -C "$rootfs" -c . | docker import - "$base" >/dev/null
fi
docker build -q -t "$image" -f "$here/test-runner/Dockerfile" "$here/test-runner" >/dev/null

# test-forge-agent: a busybox stand-in for a forge's runner agent, speaking the agent protocol of
# tests/forges/fake_github.py (tests/forges/test_fake_github.py runs it against real Docker).
forge_agent_image=${FORGE_AGENT_IMAGE:-runner-orchestrator/test-forge-agent:local}
docker build -q -t "$forge_agent_image" -f "$here/test-forge-agent/Dockerfile" "$here/test-forge-agent" >/dev/null

# test-github-runner, test-gitea-runner: the real entrypoint scripts of images/github-runner and images/gitea-runner,
# unmodified, in front of fake runner binaries (images/test-runner-entrypoints), for
# tests/integration/test_runner_images.py. One temporary context holds the fakes, the copied scripts, act_runner's
# config.yaml taken from the printf lines of images/gitea-runner/Dockerfile, and userland/: on a Debian host, its
# dash and the GNU tools the entrypoints and the controller's bootstrap call (with their libraries, at their host
# paths), so the scripts run under the shell and tools of debian:bookworm-slim rather than busybox's.
gh_runner_image=${GITHUB_RUNNER_TEST_IMAGE:-runner-orchestrator/test-github-runner:local}
gitea_runner_image=${GITEA_RUNNER_TEST_IMAGE:-runner-orchestrator/test-gitea-runner:local}
ctx=$(mktemp -d)
scratch+=("$ctx")
cp -R "$here/test-runner-entrypoints/." "$ctx/"
mkdir -p "$ctx/github-runner" "$ctx/gitea-runner" "$ctx/userland/etc"
cp "$here/github-runner/entrypoint.sh" "$here/github-runner/no-docker.sh" "$ctx/github-runner/"
cp "$here/gitea-runner/entrypoint.sh" "$ctx/gitea-runner/"
sed -n "/^ *&& printf '%s\\\\n' \\\\\$/,/> \/etc\/gitea-runner\/config.yaml/{s/^    '\(.*\)' \\\\\$/\1/p}" \
  "$here/gitea-runner/Dockerfile" >"$ctx/gitea-runner/config.yaml"
grep -q '^  file: /run/secrets/.runner$' "$ctx/gitea-runner/config.yaml" || {
  echo "cannot extract act_runner's config.yaml from $here/gitea-runner/Dockerfile" >&2
  exit 1
}
userland=busybox
if [ -x /usr/bin/dash ] && command -v ldd >/dev/null && /usr/bin/cp --version 2>/dev/null | grep -q GNU; then
  tools=(/usr/bin/dash)
  for tool in cat chmod cp dd grep head id ln mkdir rm sed sleep stat; do tools+=("$(readlink -f "$(command -v "$tool")")"); done
  mapfile -t tool_libs < <(ldd "${tools[@]}" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | sort -u)
  mkdir -p "$ctx/userland/usr/bin"
  cp -L "${tools[@]}" "$ctx/userland/usr/bin/"
  cp -L --parents "${tool_libs[@]}" "$ctx/userland/"
  userland="$(. /etc/os-release && echo "${PRETTY_NAME:-?}") host: ${tools[*]##*/} (/bin/sh is dash)"
fi
printf '%s\n' "$userland" >"$ctx/userland/etc/runner-test-userland"
docker build -q -t "$gh_runner_image" -f "$ctx/Dockerfile.github-runner" "$ctx" >/dev/null
docker build -q -t "$gitea_runner_image" -f "$ctx/Dockerfile.gitea-runner" "$ctx" >/dev/null

# psql-runner: the base plus the host's psql. Rebuilt only when its inputs change (the base image, the binary, a
# library): their digest is a label of the image, so a run with nothing to do costs one `docker image inspect`.
psql_bin=/usr/lib/postgresql/15/bin/psql
if [ ! -x "$psql_bin" ]; then
  psql_bin=$(find /usr/lib/postgresql -path '/usr/lib/postgresql/*/bin/psql' -type f 2>/dev/null | sort -V | tail -1 || true)
fi
if [ -n "$psql_bin" ] && [ -x "$psql_bin" ]; then
  # Every library ldd resolves ("libpq.so.5 => /lib/x86_64-linux-gnu/libpq.so.5 (0x...)") and the dynamic loader
  # ("/lib64/ld-linux-x86-64.so.2 (0x...)"); linux-vdso.so.1 has no file.
  mapfile -t libs < <(ldd "$psql_bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
  if [ ${#libs[@]} -eq 0 ]; then
    echo "ldd lists no libraries for $psql_bin" >&2
    exit 1
  fi
  fingerprint=$({
    docker image inspect -f '{{.Id}}' "$base"
    sha256sum "$psql_bin" "${libs[@]}"
  } | sha256sum | cut -d' ' -f1)
  label=org.runner-orchestrator.psql-runner.inputs
  built=$(docker image inspect -f "{{index .Config.Labels \"$label\"}}" "$psql_image" 2>/dev/null || true)
  if [ "$built" != "$fingerprint" ]; then
    context=$(mktemp -d)
    scratch+=("$context")
    mkdir -p "$context/rootfs/usr/bin"
    # Dereferenced copies at the paths ldd printed: /lib/... stays /lib/..., the loader stays where PT_INTERP says.
    cp -L --parents "$psql_bin" "${libs[@]}" "$context/rootfs/"
    ln -s "$psql_bin" "$context/rootfs/usr/bin/psql"
    {
      echo "# Generated by images/build-test-images.sh: busybox plus the host's $psql_bin and its libraries."
      echo "FROM $base"
      echo "COPY rootfs/ /"
      echo "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin"
      echo "LABEL $label=$fingerprint"
      echo "USER 10001:10001"
      echo "WORKDIR /workspace"
      echo 'CMD ["/bin/sh"]'
    } >"$context/Dockerfile"
    docker build -q -t "$psql_image" "$context" >/dev/null
    echo "built $psql_image from $psql_bin" >&2
  fi
fi
echo "$image"

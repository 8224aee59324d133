#!/bin/sh
# One ephemeral Gitea Actions runner, one job, then exit. The registration is act_runner's own `.runner` file,
# written by the controller into the private tmpfs /run/secrets (over the container's stdin): this script and
# act_runner read it from there; no token is on a command line, in the environment or in the image.
set -eu

RUNNER_FILE=/run/secrets/.runner
CONFIG=/etc/gitea-runner/config.yaml
say() { printf 'gitea-runner: %s\n' "$*"; }
die() { printf 'gitea-runner: ERROR: %s\n' "$*" >&2; exit 78; }  # 78: configuration error (sysexits.h)

umask 077
export HOME=/workspace TMPDIR=/workspace/tmp
mkdir -p /workspace/act /workspace/tmp

[ -f "$RUNNER_FILE" ] && [ -s "$RUNNER_FILE" ] || die "no registration at $RUNNER_FILE. The controller delivers \
act_runner's .runner file there for each runner (GiteaForge.register); this image does not register by itself."
[ -r "$RUNNER_FILE" ] || die "$RUNNER_FILE is not readable by uid $(id -u)"
mode=$(stat -c %a "$RUNNER_FILE") || die "cannot read the mode of $RUNNER_FILE (is stat installed?)"
case "$mode" in
  600|400) ;;
  *) die "$RUNNER_FILE is readable by others (mode $mode); it must be 0600" ;;
esac
# act_runner would take a persistent registration as well: refuse it, its credential outlives the job.
grep -Eq '"ephemeral"[[:space:]]*:[[:space:]]*true' "$RUNNER_FILE" \
  || die "the registration in $RUNNER_FILE is not ephemeral; this image only runs ephemeral runners (Gitea >= 1.24)"
grep -q '"uuid"' "$RUNNER_FILE" && grep -q '"token"' "$RUNNER_FILE" \
  || die "$RUNNER_FILE is not an act_runner registration (no uuid/token)"

field() { sed -n "s/^[[:space:]]*\"$1\"[[:space:]]*:[[:space:]]*\"\\([^\"]*\\)\".*/\\1/p" "$RUNNER_FILE" | head -n 1; }
say "act_runner $(act_runner --version 2>/dev/null | sed 's/^act_runner version //' || echo '?'), runner \
$(field name) for $(field address), one job (ephemeral, --once), uid $(id -u)"

# No Docker, on purpose: the orchestrator never hands a container the Docker socket.
say "NOTE: no Docker daemon is available to this runner. Jobs run in act_runner's host mode (every label is"
say "      registered as NAME:host): steps run directly in this hardened container. Jobs that use 'container:',"
say "      'services:', Docker container actions or 'docker://' steps, or run docker themselves, fail here;"
say "      run them on a runner that is given a Docker daemon, which this orchestrator does not do."
if [ -S /var/run/docker.sock ] || [ -S /run/docker.sock ] || [ -n "${DOCKER_HOST:-}" ]; then
  say "WARNING: a Docker socket or DOCKER_HOST is visible in this container; the orchestrator never provides one."
fi

# `--once` as well as the ephemeral registration: act_runner exits after one task either way (daemon.go).
exec act_runner daemon --once --config "$CONFIG"

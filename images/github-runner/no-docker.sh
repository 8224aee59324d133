#!/bin/sh
# Installed as /usr/local/bin/docker: the runner looks for `docker` on PATH before a job's first container step
# (services, a job container, a Docker action) and shows what it prints in the job's log. There is no Docker here,
# by design; say so plainly instead of "command not found".
cat >&2 <<'EOF'
docker: this GitHub Actions runner has no Docker daemon. runner-orchestrator runs each job in its own hardened
container and never hands it a Docker socket, so jobs with `services:` or a job `container:`, and Docker container
actions (`uses: docker://...`, or an action whose action.yml says `using: docker`), cannot run on it. Use `run:`
steps, JavaScript or composite actions, or send such jobs to runners that provide a Docker daemon of their own.
EOF
exit 1

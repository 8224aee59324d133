#!/bin/sh
# runner-entrypoint: starts GitHub's runner (actions/runner, unpacked read-only in /opt/actions-runner) for exactly
# one job with the JIT config the controller delivered, on a read-only root filesystem.
#
# 1. The JIT config is read from /run/secrets/ACTIONS_RUNNER_INPUT_JITCONFIG (the controller writes it there over
#    the container's stdin, into the private tmpfs) and the file is removed. It reaches the runner as the
#    environment variable ACTIONS_RUNNER_INPUT_JITCONFIG of the runner's own processes only: never in the
#    container's configuration (docker inspect), never on a command line (/proc/*/cmdline, ps).
# 2. The runner writes into its root directory (the parent of its bin/: the JIT config's .runner, .credentials,
#    .credentials_rsaparams; run-helper.sh; _diag/; _work/ with _temp, _tool, _actions) and deletes the config
#    files again after its job, so the root is built in the /workspace tmpfs: real copies of the root's scripts and
#    of bin/Runner.* (the entry points: .NET resolves the real path of the executable and of the app's dll, and the
#    runner takes its root from there), symbolic links to everything else (the .NET runtime in bin/, externals/).
#    Nothing is written outside the tmpfs mounts (/workspace, /tmp, /run/secrets).
# 3. exec ./run.sh (which starts bin/Runner.Listener run via run-helper.sh, and hands signals on to it).
#
# Exit 2: no usable JIT config, or the runner root could not be built. Environment (all optional, none secret):
#   RUNNER_JITCONFIG_FILE   default /run/secrets/ACTIONS_RUNNER_INPUT_JITCONFIG
#   RUNNER_JITCONFIG_WAIT_S seconds to wait for that file to appear (default 30)
#   RUNNER_INSTALL_DIR      the unpacked release (default /opt/actions-runner, read-only)
#   RUNNER_ROOT             the runner root to build (default /workspace/runner, must not exist yet)
set -eu
umask 077

JIT_FILE=${RUNNER_JITCONFIG_FILE:-/run/secrets/ACTIONS_RUNNER_INPUT_JITCONFIG}
WAIT_S=${RUNNER_JITCONFIG_WAIT_S:-30}
SOURCE=${RUNNER_INSTALL_DIR:-/opt/actions-runner}
ROOT=${RUNNER_ROOT:-/workspace/runner}

say() { printf 'runner-entrypoint: %s\n' "$*" >&2; }
die() {
	say "$*"
	exit 2
}

cat >&2 <<'EOF'
runner-entrypoint: NOTE: this runner has no Docker daemon and no Docker socket (runner-orchestrator never hands one
runner-entrypoint: to a job). Jobs with `services:` or a job `container:`, and Docker container actions
runner-entrypoint: (`uses: docker://...`, or an action whose action.yml says `using: docker`), cannot run here and
runner-entrypoint: fail at their first Docker step; `run:` steps, JavaScript and composite actions run as usual.
EOF

# -- 1. the JIT config ------------------------------------------------------------------------------------------
waited=0
while [ ! -e "$JIT_FILE" ]; do
	[ "$waited" -lt "$WAIT_S" ] || die "no JIT config at $JIT_FILE after ${WAIT_S} s (the controller delivers it there over stdin; it is never taken from the environment or the command line)"
	sleep 1
	waited=$((waited + 1))
done
[ -f "$JIT_FILE" ] || die "$JIT_FILE is not a regular file"
[ -r "$JIT_FILE" ] || die "$JIT_FILE is not readable by uid $(id -u)"
jit=$(cat "$JIT_FILE") || die "cannot read $JIT_FILE"
rm -f "$JIT_FILE" || die "cannot remove $JIT_FILE"
[ ! -e "$JIT_FILE" ] || die "$JIT_FILE is still there after rm"
case $jit in
'' | *[!A-Za-z0-9+/=]*) die "$JIT_FILE does not hold a base64 JIT config (empty, or other characters)" ;;
esac

# -- 2. a writable runner root in the tmpfs ---------------------------------------------------------------------
[ -x "$SOURCE/bin/Runner.Listener" ] || die "no runner in $SOURCE (bin/Runner.Listener is missing)"
[ -f "$SOURCE/run.sh" ] || die "no run.sh in $SOURCE"
[ ! -e "$ROOT" ] || die "$ROOT exists already: a runner container runs one runner, once"
parent=${ROOT%/*}
[ -d "${parent:-/}" ] && [ -w "${parent:-/}" ] || die "cannot create $ROOT: ${parent:-/} is not a writable directory (is /workspace a tmpfs?)"
mkdir -m 0700 "$ROOT"

for entry in "$SOURCE"/* "$SOURCE"/.[!.]*; do
	[ -e "$entry" ] || [ -L "$entry" ] || continue
	name=${entry##*/}
	if [ "$name" = bin ]; then
		continue
	elif [ -d "$entry" ]; then
		ln -s "$entry" "$ROOT/$name" # externals/ and the like: read, never written
	else
		# run.sh and run-helper.sh resolve their own path through symbolic links: they must be real files here,
		# or they would run the runner out of $SOURCE. (They are a few kB.)
		cp -p "$entry" "$ROOT/$name"
	fi
done
mkdir -m 0700 "$ROOT/bin"
cp -rs "$SOURCE/bin/." "$ROOT/bin/" || die "cannot link $SOURCE/bin into $ROOT/bin"
for entry in "$SOURCE"/bin/Runner.*; do
	[ -f "$entry" ] || continue
	rm -f "$ROOT/bin/${entry##*/}"
	cp -p "$entry" "$ROOT/bin/${entry##*/}"
done
mkdir -m 0700 "$ROOT/_work" "$ROOT/_diag"

if [ -z "${HOME:-}" ] || [ ! -w "$HOME" ]; then
	HOME=${ROOT%/*}
	export HOME
fi
export RUNNER_MANUALLY_TRAP_SIG="${RUNNER_MANUALLY_TRAP_SIG:-1}"

# -- 3. the runner ----------------------------------------------------------------------------------------------
cd "$ROOT"
ACTIONS_RUNNER_INPUT_JITCONFIG=$jit
export ACTIONS_RUNNER_INPUT_JITCONFIG
unset jit
exec ./run.sh

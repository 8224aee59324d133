#!/bin/sh
# FAKE actions/runner run.sh (images/test-runner-entrypoints): checks what images/github-runner/entrypoint.sh promises
# and prints one machine-readable line per fact, "fake-runner: KEY=VALUE", on stdout; then, like the real run.sh,
# copies run-helper.sh.template next to itself and runs it (which runs bin/Runner.Listener run). Its exit code is
# the listener's. Never prints the JIT config itself: only its SHA-256.
set -u
say() { printf 'fake-runner: %s=%s\n' "$1" "$2"; }

# The real run.sh resolves its own path through symbolic links and runs the runner out of that directory.
self=$(readlink -f "$0")
root=${self%/*}
say root "$root"
say cwd "$(pwd -P)"
say sh "$(readlink -f /bin/sh)"
say uid "$(id -u):$(id -g)"
say umask "$(umask)"
say home "${HOME:-}"
say trap_sig "${RUNNER_MANUALLY_TRAP_SIG:-}"

# The JIT config: in this process's environment, nowhere else.
jit=${ACTIONS_RUNNER_INPUT_JITCONFIG:-}
if [ -n "$jit" ]; then say jit_env set; else say jit_env unset; fi
# printf is a shell builtin: the value reaches sha256sum and cut over a pipe, never on a command line.
say jit_sha256 "$(printf '%s' "$jit" | sha256sum | cut -c1-64)"
if [ -e /run/secrets/ACTIONS_RUNNER_INPUT_JITCONFIG ]; then say jit_file present; else say jit_file gone; fi
say secrets_dir "$(ls -A /run/secrets | tr '\n' ',')"
chunk=$(printf '%s' "$jit" | cut -c9-40) # a piece from inside: a partial copy counts too
scanned=0
in_cmdline=
in_environ=
for p in /proc/[0-9]*; do
	pid=${p#/proc/}
	cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
	[ -n "$cmd" ] || continue
	scanned=$((scanned + 1))
	if [ -n "$jit" ]; then
		case $cmd in *"$jit"* | *"$chunk"*) in_cmdline="$in_cmdline$pid," ;; esac
		env=$(tr '\0' '\n' <"$p/environ" 2>/dev/null) || env=
		case $env in *"$chunk"*) in_environ="$in_environ$pid:$(cat "$p/comm" 2>/dev/null)," ;; esac
	fi
done
say procs_scanned "$scanned"
say jit_in_cmdline "${in_cmdline:-none}"
say jit_in_environ "${in_environ:-none}"
say pid1 "$(tr '\0' ' ' </proc/1/cmdline)"

# A read-only root filesystem and a read-only release.
if (: >/.fake-runner-probe) 2>/dev/null; then say rootfs writable; else say rootfs read-only; fi
if (: >/opt/actions-runner/.probe) 2>/dev/null; then say install_dir writable; else say install_dir read-only; fi
say install_owner "$(stat -c %u /opt/actions-runner/bin/Runner.Listener)"

# The runner root: every entry, "file", "dir" or "link:TARGET".
for entry in "$root"/* "$root"/.[!.]* "$root"/bin/* "$root"/bin/*/*; do
	[ -e "$entry" ] || [ -L "$entry" ] || continue
	if [ -L "$entry" ]; then
		kind=link:$(readlink -f "$entry") # resolved: GNU cp -rs of bin/. makes /opt/actions-runner/bin/./NAME
	elif [ -d "$entry" ]; then
		kind=dir
	else
		kind=file
	fi
	say "entry:${entry#"$root"/}" "$kind"
done
say root_mode "$(stat -c %a:%u "$root")"

# No Docker: the image's docker explains and fails.
out=$(docker ps 2>&1)
say docker_rc "$?"
case $out in *"has no Docker daemon"*) say docker_says no-daemon ;; *) say docker_says other ;; esac

cp -f "$root/run-helper.sh.template" "$root/run-helper.sh" || {
	say run_helper cannot-copy
	exit 97
}
"$root/run-helper.sh" "$@"
code=$?
say run_sh_exit "$code"
exit "$code"

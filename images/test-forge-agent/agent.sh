#!/bin/sh
# Test stand-in for a forge's runner agent (GitHub's actions/runner), for tests against tests/forges/fake_github.py.
# Busybox only: sh, wget, base64, sed.
#
# Like the real runner started with a JIT config, it reads its one-time registration from
# /run/secrets/ACTIONS_RUNNER_INPUT_JITCONFIG (written there by the controller over the container's stdin; never
# taken from the environment or the command line), decodes it (base64 of a JSON object whose values are the
# base64 runner files; `.runner` holds agentId, agentName, serverUrl), then speaks the fake's agent protocol:
#   POST {serverUrl}/_fake/agent/{agentId}/online        200; 409 = this JIT config was used already
#   GET  {serverUrl}/_fake/agent/{agentId}/assignment    long poll: 204 nothing yet, 200 {"job_id","seconds","exit"},
#                                                        410 = registration deleted (exit 0, no job)
#   POST {serverUrl}/_fake/agent/{agentId}/heartbeat     once a second while the job "runs"
#   POST {serverUrl}/_fake/agent/{agentId}/done          body: the exit code
# and exits with the job's exit code. Exit 2: no usable JIT config; exit 3: the fake refused or was unreachable.
# Writes one scratch file under $TMPDIR (default /tmp), so it runs on a read-only root filesystem. Besides the
# four tools it uses sleep and rm (busybox applets), nothing else.
set -u

JITCONFIG=/run/secrets/ACTIONS_RUNNER_INPUT_JITCONFIG
headers=${TMPDIR:-/tmp}/forge-agent.$$.headers
name=agent
hb=

say() { echo "$*"; }
die() { code=$1; shift; echo "agent $name: $*" >&2; cleanup; exit "$code"; }
cleanup() {
	[ -n "$hb" ] && kill "$hb" 2>/dev/null
	rm -f "$headers"
}
trap 'say "agent $name: stopped by a signal"; cleanup; exit 143' TERM INT HUP

# string_field JSON KEY / number_field JSON KEY: a top-level value of a one-line JSON object (keys are unique).
string_field() { printf '%s' "$1" | sed -n "s/.*\"$2\"[ ]*:[ ]*\"\([^\"]*\)\".*/\1/p"; }
number_field() { printf '%s' "$1" | sed -n "s/.*\"$2\"[ ]*:[ ]*\(-\{0,1\}[0-9][0-9.]*\).*/\1/p"; }

[ -e "$JITCONFIG" ] || die 2 "no JIT config at $JITCONFIG (the controller writes it there over stdin)"
[ -r "$JITCONFIG" ] || die 2 "JIT config $JITCONFIG is not readable by this user"
[ -s "$JITCONFIG" ] || die 2 "JIT config $JITCONFIG is empty"
: 2>/dev/null >"$headers" || die 2 "cannot write $headers (is ${TMPDIR:-/tmp} a writable tmpfs?)"

# busybox base64 -d skips characters outside the alphabet; an empty result is as bad as an error.
files=$(base64 -d <"$JITCONFIG" 2>/dev/null) && [ -n "$files" ] || die 2 "JIT config $JITCONFIG is not valid base64"
runner_b64=$(string_field "$files" '\.runner')
[ -n "$runner_b64" ] || die 2 "JIT config $JITCONFIG has no .runner file (not a JIT config?)"
runner=$(printf '%s' "$runner_b64" | base64 -d 2>/dev/null) && [ -n "$runner" ] ||
	die 2 "the .runner file in the JIT config is not base64"
agent_id=$(number_field "$runner" agentId)
name=$(string_field "$runner" agentName)
server=$(string_field "$runner" serverUrl)
case $agent_id in '' | *[!0-9]*) die 2 "the .runner file has no numeric agentId" ;; esac
case $server in http://* | https://*) ;; *) die 2 "the .runner file has no serverUrl" ;; esac
[ -n "$name" ] || name=runner-$agent_id
base=$server/_fake/agent/$agent_id

# call METHOD PATH [BODY]: sets $status (000 when unreachable) and $body. No -T: Debian's busybox 1.35 wget crashed
# (SIGSEGV) with it here; its default network timeout (900 s) outlasts the fake's long poll.
call() {
	if [ "$1" = POST ]; then
		body=$(wget -q -S -O - --header 'Content-Type: text/plain' --post-data "${3:-}" "$base/$2" 2>"$headers")
	else
		body=$(wget -q -S -O - "$base/$2" 2>"$headers")
	fi
	status=$(sed -n 's/^ *HTTP\/[0-9.]* \([0-9][0-9][0-9]\).*/\1/p' "$headers" | sed -n '$p')
	[ -n "$status" ] || status=000
}

# Going online: retried while the fake is unreachable (a few seconds), refused for good otherwise.
tries=0
while :; do
	call POST online
	case $status in
	200) break ;;
	409) die 3 "the fake refused to bring runner $agent_id online: this JIT config was used already (single use)" ;;
	404 | 410) die 3 "runner registration $agent_id does not exist (deleted?) at $server" ;;
	000) tries=$((tries + 1)); [ "$tries" -lt 20 ] || die 3 "cannot reach $server"; sleep 0.5 ;;
	*) die 3 "going online at $server failed: HTTP $status" ;;
	esac
done
say "agent $name online at $server"

tries=0
while :; do
	call GET assignment
	case $status in
	200) break ;;
	204) tries=0 ;;
	410) say "agent $name: registration deleted by the server before any job, exiting"; cleanup; exit 0 ;;
	000) tries=$((tries + 1)); [ "$tries" -lt 20 ] || die 3 "lost $server"; sleep 0.5 ;;
	*) die 3 "waiting for a job failed: HTTP $status" ;;
	esac
done
job=$(number_field "$body" job_id)
seconds=$(number_field "$body" seconds)
code=$(number_field "$body" exit)
case $job in '' | *[!0-9]*) die 3 "assignment without a job id: $body" ;; esac
case $code in '' | *[!0-9]*) die 3 "assignment without an integer exit: $body" ;; esac
say "running job $job"

(while :; do sleep 1; wget -q -O /dev/null --post-data '' "$base/heartbeat" 2>/dev/null; done) &
hb=$!
sleep "${seconds:-0}" &
wait $!
kill "$hb" 2>/dev/null
hb=

call POST done "$code"
[ "$status" = 200 ] || die 3 "reporting job $job done failed: HTTP $status"
say "job $job done: exit $code"
cleanup
exit "$code"

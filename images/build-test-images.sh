#!/usr/bin/env bash
# Builds the runner images the tests and the demo use, without any registry: a busybox root filesystem made
# from Debian's busybox-static is imported as a base image, then images/test-runner/Dockerfile builds FROM it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
base=runner-orchestrator/busybox-base:local
image=${1:-runner-orchestrator/test-runner:local}
busybox=$(command -v busybox || echo /bin/busybox)

if ! docker image inspect "$base" >/dev/null 2>&1; then
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
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
echo "$image"

#!/usr/bin/env bash
# One-time, idempotent set-up of podman on a development / CI machine without a Docker daemon or an
# image registry (../shared/containers-here.md): podman with runc and host cgroup and network
# namespaces, and a local Debian 12 base image built from Debian's packages (localhost/debian:bookworm),
# which `BASE_IMAGE=localhost/debian:bookworm make image` builds on. Needs root and the Debian archive.
set -euo pipefail
BASE=${BASE_IMAGE:-localhost/debian:bookworm}
log() { printf '[podman-setup] %s\n' "$*"; }

if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
  log "installing podman, runc, debootstrap, uidmap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap uidmap >/dev/null
fi
if [ ! -f /etc/containers/containers.conf ] || ! grep -q 'runtime = "runc"' /etc/containers/containers.conf; then
  log "configuring podman: runc, host cgroup and network namespaces, no default ulimits"
  mkdir -p /etc/containers
  cat > /etc/containers/containers.conf <<'CONF'
[containers]
cgroupns = "host"
netns = "host"
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
fi
if ! podman image exists "$BASE"; then
  log "building the base image $BASE with debootstrap (about a minute)"
  rootfs=$(mktemp -d)
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  debootstrap --variant=minbase bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >/dev/null
  tar -C "$rootfs" -c . | podman import - "$BASE" >/dev/null
  rm -rf "$rootfs"
fi
log "ready: BASE_IMAGE=$BASE make image"

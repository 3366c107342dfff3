#!/usr/bin/env bash
# make image: build docker/Dockerfile with podman (or docker) and run its smoke check.
#   IMAGE        tag to build (default vla-serving:cpu)
#   BASE_IMAGE   the Python 3.11 / Debian base (default python:3.11-slim-bookworm; where no registry is
#                reachable, a local one: see docker/README.md)
#   VLA_ROS_WHEELS  the launch / ros2 CLI wheels copied into the image (default: shared/wheels/kilted)
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-vla-serving:cpu}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}
ENGINE=$(command -v podman || command -v docker || true)
[ -n "$ENGINE" ] || { echo "image: neither podman nor docker is installed" >&2; exit 2; }
WHEELS=${VLA_ROS_WHEELS:-}
for candidate in "$WHEELS" ../shared/wheels/kilted /work/shared/wheels/kilted; do
  if [ -n "$candidate" ] && [ -d "$candidate" ]; then WHEELS=$candidate; break; fi
done
[ -d "$WHEELS" ] || { echo "image: no launch / ros2 CLI wheels (set VLA_ROS_WHEELS)" >&2; exit 2; }
rm -rf docker/wheels docker/ca-certificates && mkdir -p docker/wheels docker/ca-certificates
cp "$WHEELS"/*.whl docker/wheels/
# The build host's own CA certificates (a TLS-inspecting proxy's), so pip in the image trusts the same.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then cp /usr/local/share/ca-certificates/*.crt docker/ca-certificates/; fi
start=$(date +%s)
"$ENGINE" build --build-arg BASE_IMAGE="$BASE_IMAGE" -f docker/Dockerfile -t "$IMAGE" .
built=$(( $(date +%s) - start ))
size=$("$ENGINE" image inspect "$IMAGE" --format '{{.Size}}')
echo "image: built $IMAGE from $BASE_IMAGE in ${built} s, $(( size / 1000000 )) MB"
start=$(date +%s)
"$ENGINE" run --rm --shm-size=1g "$IMAGE"
echo "image: smoke check passed in $(( $(date +%s) - start )) s"

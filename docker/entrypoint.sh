#!/usr/bin/env bash
# Every command of the image runs in the workspace set-up wrote (ROS 2, the three packages, the PATH).
set -e
# shellcheck disable=SC1091
. /opt/vla/env.sh
exec "$@"

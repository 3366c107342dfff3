#!/usr/bin/env bash
# Idempotent installer of the pi0.5 reference venv: LeRobot 0.4.4 + the openpi-patched transformers 4.53.2 on
# CPU torch, the oracle that test/pi05_oracle.py runs in (parity tests). Same commands as the reference kit's
# README: a Python 3.11 venv, `pip install --no-deps -f KIT -r KIT/requirements-pi05-reference.txt` (a pinned,
# complete closure; PyPI for everything but the kit's local transformers wheel), and a .pth putting the kit's
# import-only torchvision stub on the path.
#
#   VLA_PI05_REFERENCE_KIT   the kit directory (default: <repo>/../shared/wheels/reference, else
#                            /work/shared/wheels/reference)
#   VLA_PI05_REFERENCE_VENV  where the venv goes (default: <repo>/.cache/pi05-reference, git-ignored)
#   VLA_PI05_PYTHON          the interpreter to build it from (default: python3.11)
#   VLA_PI05_PIP_ARGS        extra pip arguments, e.g. "--extra-index-url https://download.pytorch.org/whl/cpu"
#                            for the CPU torch build where PyPI's torch 2.13.0 would be the large CUDA one
#
# A stamp inside the venv records a hash of the kit's requirements and stub, this script, the kit path and
# the interpreter version; when it matches, the script does nothing. Without a matching stamp an existing
# venv is verified (every pin installed at its version, the stub on the path, lerobot's pi05 importing) and
# adopted when it passes, otherwise rebuilt. The stamp is written last, so an interrupted run is redone next
# time. Concurrent runs are serialised with flock where available.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The kit sits in the workspace's shared/ folder, beside this checkout or at the workplace's /work/shared.
if [ -z "${VLA_PI05_REFERENCE_KIT:-}" ] && [ ! -d "$ROOT/../shared/wheels/reference" ] && [ -d /work/shared/wheels/reference ]; then
  VLA_PI05_REFERENCE_KIT=/work/shared/wheels/reference
fi
KIT=${VLA_PI05_REFERENCE_KIT:-$ROOT/../shared/wheels/reference}
VENV=${VLA_PI05_REFERENCE_VENV:-$ROOT/.cache/pi05-reference}
PY_BIN=${VLA_PI05_PYTHON:-python3.11}
STAMP=$VENV/.pi05-reference.stamp
start=$(date +%s)

log() { printf '[pi05-reference %3ss] %s\n' "$(( $(date +%s) - start ))" "$*"; }
die() { printf 'setup_pi05_reference: %s\n' "$*" >&2; exit 1; }

[ -d "$KIT" ] || die "reference kit directory not found: $KIT (set VLA_PI05_REFERENCE_KIT)"
KIT=$(cd "$KIT" && pwd)
REQS=$KIT/requirements-pi05-reference.txt
STUBS=$KIT/stubs
[ -f "$REQS" ] && [ -f "$STUBS/torchvision/__init__.py" ] \
  || die "reference kit directory $KIT lacks requirements-pi05-reference.txt or stubs/torchvision/"
command -v "$PY_BIN" >/dev/null || die "interpreter not found: $PY_BIN (set VLA_PI05_PYTHON to a Python 3.11)"
py_version=$("$PY_BIN" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
case $py_version in 3.11.*) ;; *) die "$PY_BIN is Python $py_version; the reference closure needs 3.11" ;; esac

want=$( { cat "$REQS" "$STUBS/torchvision/__init__.py" "${BASH_SOURCE[0]}"; echo "$KIT $py_version"; } \
        | sha256sum | cut -d' ' -f1)
up_to_date() { [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ] && [ -x "$VENV/bin/python" ]; }
if up_to_date; then
  log "up to date: $VENV"
  exit 0
fi

mkdir -p "$(dirname "$VENV")"
if command -v flock >/dev/null; then
  exec 9>"$VENV.lock"
  flock 9
  if up_to_date; then
    log "up to date: $VENV (set up by a concurrent run)"
    exit 0
  fi
fi

# Every pin installed at its version, the torchvision stub (not a real torchvision) on the path, and
# lerobot's pi05 importing with the openpi-patched transformers it insists on.
verify() {
  "$VENV/bin/python" - "$REQS" "$STUBS" <<'PY'
import importlib.metadata as md
import re
import sys

from packaging.specifiers import SpecifierSet

reqs, stubs = sys.argv[1:]
pins = [m.groups() for m in map(re.compile(r"([A-Za-z0-9_.\-]+)==(\S+)").match, open(reqs)) if m]
wrong = []
for name, version in pins:
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = None
    if have is None or have not in SpecifierSet(f"=={version}"):  # PEP 440: ==2.13.0 admits 2.13.0+cpu
        wrong.append(f"{name}=={version} (installed: {have})")
if wrong:
    sys.exit("  not as pinned: " + ", ".join(wrong[:8]) + (" ..." if len(wrong) > 8 else ""))
import torchvision

if not torchvision.__file__.startswith(stubs):
    sys.exit(f"  torchvision is {torchvision.__file__}, not the stub in {stubs}")
import lerobot.policies.pi05.modeling_pi05  # noqa: F401
import torch
from transformers.models.siglip import check

if not check.check_whether_transformers_replace_is_installed_correctly():
    sys.exit("  transformers is not the openpi-patched 4.53.2")
print(f"  {len(pins)} pins ok: lerobot {md.version('lerobot')}, transformers {md.version('transformers')}, "
      f"torch {torch.__version__}")
PY
}

if [ -x "$VENV/bin/python" ]; then
  log "no matching stamp: verifying the existing venv $VENV"
  if verify; then
    echo "$want" > "$STAMP"
    log "done: adopted $VENV"
    exit 0
  fi
  [ -f "$VENV/pyvenv.cfg" ] || die "$VENV does not look like a venv (no pyvenv.cfg); not removing it"
  log "removing the non-matching venv"
  rm -rf "$VENV"
elif [ -e "$VENV" ]; then
  [ -f "$VENV/pyvenv.cfg" ] || [ -z "$(ls -A "$VENV")" ] || die "$VENV exists and is not a venv; not removing it"
  rm -rf "$VENV"
fi

log "creating a Python $py_version venv ($PY_BIN) in $VENV"
"$PY_BIN" -m venv "$VENV"

PIP_LOG=$VENV.install.log
n_pkgs=$(grep -cE '^[A-Za-z0-9]' "$REQS")
log "installing $n_pkgs pinned packages with --no-deps from $KIT and the package index (log: $PIP_LOG)"
# shellcheck disable=SC2086  # VLA_PI05_PIP_ARGS is a word list on purpose
if ! "$VENV/bin/python" -m pip install --no-deps --disable-pip-version-check --progress-bar off \
      ${VLA_PI05_PIP_ARGS:-} -f "$KIT" -r "$REQS" >"$PIP_LOG" 2>&1; then
  grep -v "is ignored: it is neither a file nor a directory" "$PIP_LOG" | tail -n 25 >&2
  die "pip install failed (full log: $PIP_LOG)"
fi

log "adding the torchvision stub ($STUBS) through a .pth file"
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$STUBS" > "$site/torchvision_stub.pth"

log "verifying: pins, stub, lerobot pi05 import, patched transformers"
verify || die "the new venv $VENV failed verification (pip log: $PIP_LOG)"
echo "$want" > "$STAMP"
log "done: $VENV"

"""LeRobot's pi0.5 as an oracle for parity tests: fresh random reference models, computed in their own venv.

Runs in the PROJECT venv (pytest); LeRobot 0.4.4 and the openpi-patched transformers never enter this
interpreter. The flow:

1. ``reference_venv()`` runs ``scripts/setup_pi05_reference.sh`` once per pytest session. The script is a
   no-op (~0.1 s) when its stamp matches and otherwise installs the reference venv (default
   ``.cache/pi05-reference``, ~1 min, 1.6 GB) from the kit in ``$VLA_PI05_REFERENCE_KIT`` (default
   ``<repo>/../shared/wheels/reference``). A failure raises ``ReferenceSetupError`` with the script's
   output: a missing oracle is an error, never a skip.
2. ``oracle_case(shape, seed)`` returns ``.cache/pi05-oracle/<shape>-<seed>-<hash of test/pi05_oracle.py>/``.
   When that directory is absent or lacks a file, ``<venv>/bin/python test/pi05_oracle.py`` writes the case
   into a temporary sibling, which is then renamed into place: an interrupted run leaves no half case, and
   editing the oracle script changes the hash and so regenerates every case (the superseded one for the
   same shape and seed is deleted).
3. A case holds ``checkpoint/`` (LeRobot's ``save_pretrained`` output plus pre/postprocessor files and a
   stand-in tokenizer), ``oracle.safetensors`` (fixed inputs; per-layer prefix K/V, velocity probes, Euler
   trajectory and actions from LeRobot) and ``oracle.json`` (sizes, seed, versions, tensor layouts). The
   layouts are documented in ``pi05_oracle.TENSOR_NOTES``; a shape's sizes in ``pi05_oracle.SHAPES``.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pi05_oracle  # test/ is on sys.path under pytest; imports only the standard library here

TEST_DIR = Path(__file__).resolve().parent
ROOT = TEST_DIR.parent
SETUP_SCRIPT = ROOT / "scripts" / "setup_pi05_reference.sh"
ORACLE_SCRIPT = TEST_DIR / "pi05_oracle.py"
CASES_DIR = ROOT / ".cache" / "pi05-oracle"
ORACLE_SHAPES: tuple[str, ...] = tuple(pi05_oracle.SHAPES)
SHAPES = pi05_oracle.SHAPES
TENSOR_NOTES = pi05_oracle.TENSOR_NOTES
CASE_FILES = ("oracle.safetensors", "oracle.json", "checkpoint/config.json", "checkpoint/model.safetensors",
              "checkpoint/policy_preprocessor.json", "checkpoint/policy_postprocessor.json")
ORACLE_TIMEOUT_S = 600


class ReferenceSetupError(RuntimeError):
    """The reference venv could not be installed, or the oracle failed in it."""


def venv_dir() -> Path:
    return Path(os.environ.get("VLA_PI05_REFERENCE_VENV", ROOT / ".cache" / "pi05-reference"))


@functools.cache
def reference_venv() -> Path:
    """The reference venv, installed or verified by the setup script once per session."""
    proc = subprocess.run(["bash", str(SETUP_SCRIPT)], cwd=ROOT, capture_output=True, text=True)
    python = venv_dir() / "bin" / "python"
    if proc.returncode != 0 or not python.exists():
        raise ReferenceSetupError(f"{SETUP_SCRIPT.relative_to(ROOT)} failed (exit {proc.returncode}):\n"
                                  f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return venv_dir()


def oracle_digest() -> str:
    return hashlib.sha256(ORACLE_SCRIPT.read_bytes()).hexdigest()[:12]


def is_complete(case: Path) -> bool:
    return all((case / name).is_file() for name in CASE_FILES)


def run_oracle(shape: str, seed: int, out: Path) -> Path:
    """Run the oracle into ``out`` (absent or empty) unconditionally, e.g. to check it is deterministic."""
    if shape not in ORACLE_SHAPES:
        raise ValueError(f"unknown oracle shape {shape!r}; known: {', '.join(ORACLE_SHAPES)}")
    python = reference_venv() / "bin" / "python"
    cmd = [str(python), str(ORACLE_SCRIPT), "--shape", shape, "--seed", str(seed), "--out", str(out)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=ORACLE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ReferenceSetupError(f"the oracle ran past {ORACLE_TIMEOUT_S} s: {' '.join(cmd)}") from exc
    if proc.returncode != 0:
        raise ReferenceSetupError(f"the oracle failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                                  f"{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    if not is_complete(out):
        raise ReferenceSetupError(f"the oracle exited 0 but {out} lacks one of {CASE_FILES}")
    return out


def oracle_case(shape: str, seed: int = 0) -> Path:
    """The cached case directory for ``shape`` and ``seed``, computed first if absent or incomplete."""
    case = CASES_DIR / f"{shape}-{seed}-{oracle_digest()}"
    if not is_complete(case):
        _compute(shape, seed, case)
    for stale in CASES_DIR.glob(f"{shape}-{seed}-*"):  # cases written by earlier versions of the oracle
        if stale != case:
            shutil.rmtree(stale, ignore_errors=True)
    return case


def _compute(shape: str, seed: int, case: Path) -> None:
    CASES_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{case.name}.", dir=CASES_DIR))
    try:
        run_oracle(shape, seed, tmp)
        if case.exists():  # incomplete leftovers (or a concurrent writer's finished case)
            if is_complete(case):
                return
            shutil.rmtree(case)
        tmp.chmod(0o755)  # mkdtemp makes it private
        try:
            tmp.rename(case)
        except OSError:  # a concurrent run renamed its own complete case into place first
            if not is_complete(case):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SERVE_ORACLE_SCRIPT = TEST_DIR / "pi05_serve_oracle.py"


def lerobot_served_actions(checkpoint: Path, sizes: dict, tokenizer: Path, images, state, task: str, noise,
                           steps: int, workdir: Path):
    """What LeRobot's whole pipeline (preprocessor, policy, postprocessor) answers for one robot observation
    (``images`` uint8 [C, H, W, 3] in the checkpoint's camera order) with each of the noise draws [K, 50, 32]:
    float32 [K, 50, action_dim] in robot units. ``sizes`` is the checkpoint's ``tiny_sizes`` description."""
    import numpy as np

    inputs, shape_json, out = workdir / "serve_inputs.npz", workdir / "serve_sizes.json", workdir / "serve_out.npz"
    np.savez(inputs, images=np.asarray(images, np.uint8), state=np.asarray(state, np.float32), task=np.array(task),
             noise=np.asarray(noise, np.float32), steps=np.array(steps))
    shape_json.write_text(__import__("json").dumps({"sizes": sizes}))
    python = reference_venv() / "bin" / "python"
    cmd = [str(python), str(SERVE_ORACLE_SCRIPT), "--checkpoint", str(checkpoint), "--shape-json", str(shape_json),
           "--tokenizer", str(tokenizer), "--inputs", str(inputs), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=ORACLE_TIMEOUT_S)
    if proc.returncode != 0:
        raise ReferenceSetupError(f"the serving oracle failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                                  f"{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return np.load(out)["actions"]

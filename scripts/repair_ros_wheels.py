"""Rewrite the wheel build machine's Python paths baked into the ROS wheels' CMake exports.

The ``ros-*`` wheels are built under ``/opt/python/cp311-cp311``; their ``share/*/cmake`` files
carry that interpreter's include and numpy include directories, which do not exist here, so
``rosidl_generate_interfaces`` fails to configure until they point at this interpreter.
"""
import sys
import sysconfig
from pathlib import Path

import numpy

BUILD_PYTHON_INCLUDE = "/opt/python/cp311-cp311/include/python3.11"
BUILD_NUMPY_INCLUDE = "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include"


def main(venv: Path) -> int:
    replacements = {
        BUILD_NUMPY_INCLUDE: numpy.get_include(),
        BUILD_PYTHON_INCLUDE: sysconfig.get_paths()["include"],
    }
    changed = 0
    for path in (venv / "share").glob("*/cmake/**/*"):
        if not path.is_file() or path.suffix not in {".cmake", ".txt", ""}:
            continue
        text = path.read_text(errors="surrogateescape")
        fixed = text
        for old, new in replacements.items():
            fixed = fixed.replace(old, new)
        if fixed != text:
            path.write_text(fixed, errors="surrogateescape")
            changed += 1
    print(f"repaired {changed} CMake export file(s) under {venv / 'share'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))

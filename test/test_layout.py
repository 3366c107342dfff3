"""The house rules of the package layout, checked over its real source and a fresh interpreter.

``spec`` is the ground floor: it imports nothing else of the package, no rclpy and no torch.
Serving code (nodes, serving, runtime, sensors, client, qos) never imports the lab or the
synthetic task. Nothing imports in a circle, between files or between folders.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from import_graph import cycles, external_imports, folder_graph, folder_of, package_graph

ROOT = Path(__file__).resolve().parents[1]
SERVING = ("nodes", "serving", "runtime", "sensors", "client", "qos")
LAB_ONLY = ("lab", "synthetic")


@pytest.fixture(scope="module")
def graph():
    return package_graph(ROOT)


def test_no_import_cycle_between_files(graph):
    assert cycles(graph) == []


def test_no_import_cycle_between_folders(graph):
    assert cycles(folder_graph(graph)) == []


def test_spec_imports_nothing_above_it(graph):
    upward = {m: sorted(t for t in targets if folder_of(t) != "spec")
              for m, targets in graph.items() if folder_of(m) == "spec"}
    assert {m: t for m, t in upward.items() if t} == {}
    assert {"rclpy", "torch"}.isdisjoint(external_imports(ROOT, "spec"))


def test_serving_code_never_imports_the_lab_or_the_synthetic_task(graph):
    crossings = {m: sorted(t for t in targets if folder_of(t) in LAB_ONLY)
                 for m, targets in graph.items() if folder_of(m) in SERVING}
    assert {m: t for m, t in crossings.items() if t} == {}


def test_the_checks_see_a_cycle_and_a_crossing_when_there_is_one():
    # The checks above must be able to fail: a made-up graph with both faults is caught.
    made_up = {"vla_inference.runtime.a": {"vla_inference.lab.b"}, "vla_inference.lab.b": {"vla_inference.runtime.a"}}
    assert cycles(made_up) == [["vla_inference.lab.b", "vla_inference.runtime.a"]]
    assert cycles(folder_graph(made_up)) == [["lab", "runtime"]]


def _loaded_after_import(module: str) -> list:
    code = (f"import json, sys; import {module}; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('rclpy', 'torch', 'vla_inference'))))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout)


def test_the_spec_imports_without_rclpy_or_torch():
    loaded = _loaded_after_import("vla_inference.spec.manifest, vla_inference.spec.observation, vla_inference.spec.interface")
    assert not [m for m in loaded if m.split(".")[0] in ("rclpy", "torch")], loaded
    package = [m for m in loaded if m.startswith("vla_inference")]
    assert all(m == "vla_inference" or m.startswith("vla_inference.spec") for m in package), loaded


def test_the_inference_node_loads_no_lab_code():
    loaded = _loaded_after_import("vla_inference.nodes.inference_node")
    assert not [m for m in loaded if m.startswith(("vla_inference.lab", "vla_inference.synthetic"))], loaded


def test_every_backend_the_interface_names_is_registered():
    from vla_inference.runtime.backends import Backend, BackendUnavailableError, create_backend
    from vla_inference.spec.interface import BACKENDS
    from vla_inference.spec.manifest import load_manifest, shipped_model_dir

    manifest = load_manifest(shipped_model_dir())
    for name in BACKENDS:  # constructed, or unavailable on this machine; never an unknown name
        try:
            assert isinstance(create_backend(name, manifest), Backend)
        except BackendUnavailableError as exc:
            assert exc.backend == name

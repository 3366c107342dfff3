"""Graph nodes as operating-system processes: start, watch, signal, restart, and stop without orphans.

Each node runs in a process group of its own (a new session: ``start_new_session``, which Python 3.10
has too), so a signal to the group also reaches anything the node spawned, and a Ctrl-C typed at the
terminal reaches only the runner, which then stops the nodes in order: SIGINT (rclpy shuts down
cleanly), then SIGTERM, then SIGKILL, each after a timeout. Output goes to one log file per node.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from vla_test_pipeline.graph import NodeSpec

Resolver = Callable[[NodeSpec], List[str]]
STOP_SEQUENCE = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)


def installed_executable(spec: NodeSpec) -> List[str]:
    """``<prefix>/lib/<package>/<executable>`` of the installed package (found through the ament index)."""
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    try:
        prefix = Path(get_package_prefix(spec.package))
    except PackageNotFoundError:
        raise FileNotFoundError(f"package {spec.package!r} is not installed: run scripts/setup.sh and source "
                                "env.sh") from None
    path = prefix / "lib" / spec.package / spec.executable
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{path} is missing: is {spec.executable!r} a console script of {spec.package}? "
                                "(rerun scripts/setup.sh after adding it)")
    return [str(path)]


@dataclass
class ManagedProcess:
    spec: NodeSpec
    popen: subprocess.Popen
    log_path: Path
    log_file: IO[bytes]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ProcessSet:
    """The graph's processes, by node name."""

    def __init__(self, log_dir: Path, params_dir: Path, resolve: Resolver = installed_executable,
                 env: Optional[Mapping[str, str]] = None) -> None:
        self._log_dir = log_dir
        self._params_dir = params_dir
        self._resolve = resolve
        self._env = dict(os.environ if env is None else env)
        self._env.setdefault("PYTHONUNBUFFERED", "1")
        self._env.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
        self._processes: Dict[str, ManagedProcess] = {}
        self._specs: Dict[str, NodeSpec] = {}

    def __iter__(self):
        return iter(list(self._processes.values()))

    def __getitem__(self, name: str) -> ManagedProcess:
        return self._processes[name]

    def start_all(self, specs: Iterable[NodeSpec]) -> None:
        for spec in specs:
            self.start(spec)

    def start(self, spec: NodeSpec) -> ManagedProcess:
        """Start (or restart, once the previous one has exited) the process of ``spec``."""
        previous = self._processes.get(spec.name)
        if previous is not None and previous.running():
            raise RuntimeError(f"{spec.name} is still running (pid {previous.pid})")
        if previous is not None:
            previous.log_file.close()
        command = self._resolve(spec)
        params_file = None
        if spec.parameters:
            self._params_dir.mkdir(parents=True, exist_ok=True)
            params_file = self._params_dir / f"{spec.name}.yaml"
            params_file.write_text(spec.parameters_yaml())
        self._log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self._log_dir / f"{spec.name}.log"
        # A fresh log per run; a restart within the run appends to its predecessor's log.
        log_file = open(log_path, "ab" if spec.name in self._specs else "wb")
        popen = subprocess.Popen(
            [*command, *spec.ros_arguments(params_file)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            env=self._env, start_new_session=True, close_fds=True,
        )
        process = ManagedProcess(spec, popen, log_path, log_file)
        self._processes[spec.name] = process
        self._specs[spec.name] = spec
        return process

    def restart(self, name: str) -> ManagedProcess:
        return self.start(self._specs[name])

    def exited(self) -> List[ManagedProcess]:
        return [p for p in self._processes.values() if not p.running()]

    def pids(self) -> Dict[str, int]:
        return {p.name: p.pid for p in self._processes.values() if p.running()}

    def signal(self, name: str, sig: int) -> None:
        """Send ``sig`` to the process group of node ``name``."""
        process = self._processes[name]
        _signal_group(process.popen, sig)

    def stop(self, names: Optional[Sequence[str]] = None, timeouts_s: Sequence[float] = (10.0, 3.0, 3.0)
             ) -> Dict[str, Optional[int]]:
        """SIGINT, then SIGTERM, then SIGKILL to what is still running after each timeout.

        Returns each process's exit code (negative: the signal that ended it; None: it survived SIGKILL,
        which only a process stuck in the kernel does).
        """
        chosen = [self._processes[n] for n in (names if names is not None else list(self._processes))]
        for sig, timeout_s in zip(STOP_SEQUENCE, timeouts_s):
            alive = [p for p in chosen if p.running()]
            if not alive:
                break
            for process in alive:
                _signal_group(process.popen, sig)
            deadline = time.monotonic() + timeout_s
            while any(p.running() for p in alive) and time.monotonic() < deadline:
                time.sleep(0.05)
        for process in chosen:
            # Whatever a node spawned into its group goes with it, even after the node itself exited.
            _signal_group(process.popen, signal.SIGKILL)
            process.log_file.close()
        return {p.name: p.popen.poll() for p in chosen}


def _signal_group(popen: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(popen.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass

"""Play action chunks [H, D] out at a fixed control rate, and hold safely when none is fresh.

Plain Python (no rclpy); the client node calls ``accept_chunk`` when a response arrives and
``command`` from its control timer, once per ``control_period_s``, and publishes what it returns.

Semantics:

* Row ``k`` of a chunk is planned for ``stamp_s + k * control_period_s``, where ``stamp_s`` is the time
  the chunk's observation was taken (the request header stamp), not its arrival time.
* ``accept_chunk`` refuses a chunk that is not a finite [H, action_dim] array, that is older than
  ``max_chunk_age_s`` (``now_s - stamp_s``), whose stamp lies more than one control period in the
  future, or whose observation is older than the last accepted chunk's (out-of-order responses).
* An accepted chunk replaces the current one immediately. It was planned from the state at
  ``stamp_s``; since then the robot already executed rows of the previous chunk, so the new chunk
  starts where the robot already is on its plan. With ``delta_dims`` (the position-delta columns,
  default 0-2) that is the row whose cumulative displacement is nearest to the displacement the
  robot executed after ``stamp_s``; without them, after as many rows as were executed after
  ``stamp_s``. Either way a robot that held still since the observation skips nothing: skipping by
  elapsed time alone would throw away the only moving row of a chunk planned next to the goal, and
  the arm would stop short forever. A chunk with no row left is refused.
* After that, each ``command`` call emits the next row, one per call, never skipping or repeating
  rows, so timer jitter does not drop or double a position delta.
* The chunk is dropped and the executor holds when it is exhausted (past row H-1) or stale: the next
  row's planned time is more than ``max_chunk_age_s`` behind ``now_s`` (the control loop stalled).
* Holding depends on what the command means (``HoldPolicy``): ``ZERO`` for velocity or position-delta
  commands outputs zeros (no motion; never repeat the last velocity), ``LAST`` for absolute position
  targets repeats the last emitted row (stay put); before any row was emitted ``LAST`` has nothing to
  hold and ``command`` returns None (publish nothing).
* The reported state is ``executing`` (a chunk row was emitted), ``holding`` (a chunk was accepted
  earlier but none is usable now; ``hold_reason`` says why) or ``idle`` (no chunk accepted since
  construction or ``reset``), for a watchdog diagnostic.

Thread-safe: response callbacks and the control timer may run on different executor threads.
"""
from __future__ import annotations

import enum
import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Optional, Sequence, Tuple

import numpy as np

_ROUNDING_TOLERANCE = 1e-9


class HoldPolicy(str, enum.Enum):
    """What "hold" means for the command interface."""

    ZERO = "zero"
    LAST = "last"


class ExecutorState(str, enum.Enum):
    EXECUTING = "executing"
    HOLDING = "holding"
    IDLE = "idle"


@dataclass(frozen=True)
class ChunkDecision:
    """accepted: the chunk now drives commands, from ``start_row``; reason: why it was refused."""

    accepted: bool
    reason: str = ""
    start_row: int = 0


class ChunkExecutor:
    """Turns action chunks into one command per control period, holding per ``hold_policy`` in between."""

    def __init__(
        self,
        control_period_s: float,
        max_chunk_age_s: float,
        hold_policy: HoldPolicy | str,
        action_dim: int,
        delta_dims: Optional[Sequence[int]] = (0, 1, 2),
    ) -> None:
        for name, value in (("control_period_s", control_period_s), ("max_chunk_age_s", max_chunk_age_s)):
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}: expected a finite value > 0, received {value!r}")
        if isinstance(action_dim, bool) or not isinstance(action_dim, int) or action_dim < 1:
            raise ValueError(f"action_dim: expected a positive integer, received {action_dim!r}")
        self._period_s = float(control_period_s)
        self._max_age_s = float(max_chunk_age_s)
        self._hold_policy = HoldPolicy(hold_policy)
        self._action_dim = action_dim
        self._lock = threading.Lock()
        self._chunk: Optional[np.ndarray] = None
        self._stamp_s = 0.0
        self._next_row = 0
        self._last_command: Optional[np.ndarray] = None
        self._ever_accepted = False
        self._hold_reason = ""
        self._delta_dims = list(delta_dims) if delta_dims is not None else []
        if any(not 0 <= d < action_dim for d in self._delta_dims):
            raise ValueError(f"delta_dims: expected indices in [0, {action_dim}), received {delta_dims!r}")
        self._executed: Deque[Tuple[float, np.ndarray]] = deque()  # rows emitted in the last max_chunk_age_s

    @property
    def hold_policy(self) -> HoldPolicy:
        return self._hold_policy

    @property
    def hold_reason(self) -> str:
        """Why the executor holds ("exhausted", "stale: ..."); empty while executing or idle."""
        with self._lock:
            return self._hold_reason

    @property
    def rows_remaining(self) -> int:
        with self._lock:
            return 0 if self._chunk is None else self._chunk.shape[0] - self._next_row

    def accept_chunk(self, actions: Any, stamp_s: float, now_s: float) -> ChunkDecision:
        """Take ``actions`` [H, action_dim] from an observation stamped ``stamp_s`` (see module docstring)."""
        try:
            chunk = np.array(actions, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            return ChunkDecision(False, f"actions: not numeric ({exc})")
        if chunk.ndim != 2 or chunk.shape[0] < 1 or chunk.shape[1] != self._action_dim:
            return ChunkDecision(False, f"actions: expected shape [H >= 1, {self._action_dim}], received {list(chunk.shape)}")
        if not np.isfinite(chunk).all():
            return ChunkDecision(False, "actions: contains NaN or Inf")
        try:
            finite_times = math.isfinite(stamp_s) and math.isfinite(now_s)
        except TypeError:
            finite_times = False
        if not finite_times:
            return ChunkDecision(False, f"stamp: expected finite times, received stamp {stamp_s!r}, now {now_s!r}")
        age_s = now_s - stamp_s
        if age_s > self._max_age_s:
            return ChunkDecision(False, f"stale: observation is {age_s:.3f} s old, max {self._max_age_s:g} s")
        if age_s < -self._period_s:
            return ChunkDecision(False, f"stamp: {-age_s:.3f} s in the future")
        with self._lock:
            if self._ever_accepted and stamp_s < self._stamp_s:
                return ChunkDecision(False, "out of order: older observation than the last accepted chunk")
            start_row = self._start_row(chunk, stamp_s)
            if start_row >= chunk.shape[0]:
                return ChunkDecision(False, f"stale: the robot already executed {start_row} rows since the "
                                            f"observation, the chunk has {chunk.shape[0]}")
            self._chunk = chunk
            self._stamp_s = stamp_s
            self._next_row = start_row
            self._ever_accepted = True
            self._hold_reason = ""
        return ChunkDecision(True, "", start_row)

    def command(self, now_s: float) -> Tuple[Optional[np.ndarray], ExecutorState]:
        """The command for this control period and the executor state; call once per period."""
        with self._lock:
            chunk = self._chunk
            if chunk is not None:
                if self._next_row >= chunk.shape[0]:
                    self._drop_chunk("exhausted")
                else:
                    lag_s = now_s - (self._stamp_s + self._next_row * self._period_s)
                    if lag_s > self._max_age_s:
                        self._drop_chunk(f"stale: row {self._next_row} is {lag_s:.3f} s behind its planned time")
                    else:
                        self._last_command = chunk[self._next_row]
                        self._next_row += 1
                        self._executed.append((now_s, self._last_command))
                        while self._executed and self._executed[0][0] < now_s - self._max_age_s:
                            self._executed.popleft()
                        return self._last_command.copy(), ExecutorState.EXECUTING
            state = ExecutorState.HOLDING if self._ever_accepted else ExecutorState.IDLE
            return self._hold_command(), state

    def hold(self, reason: str) -> None:
        """Drop the current chunk (if any) and hold from the next ``command`` on: the caller knows the
        chunk must not be finished (the server vanished, an operator stop)."""
        with self._lock:
            self._drop_chunk(reason)

    def reset(self) -> None:
        """Forget chunks and the last command (back to idle), for example after the robot was re-homed."""
        with self._lock:
            self._chunk = None
            self._next_row = 0
            self._last_command = None
            self._ever_accepted = False
            self._hold_reason = ""
            self._executed.clear()

    def _start_row(self, chunk: np.ndarray, stamp_s: float) -> int:
        """Where the robot already is on a chunk planned from the state at ``stamp_s`` (lock held)."""
        since = [row for t, row in self._executed if t >= stamp_s - _ROUNDING_TOLERANCE]
        if not self._delta_dims:
            return len(since)
        if not since:
            return 0
        done = np.sum([row[self._delta_dims] for row in since], axis=0)
        planned = np.concatenate([np.zeros((1, len(self._delta_dims))),
                                  np.cumsum(chunk[:, self._delta_dims], axis=0)])  # [H + 1]: before each row
        return int(np.argmin(np.linalg.norm(planned - done, axis=1)))

    def _drop_chunk(self, reason: str) -> None:
        self._chunk = None
        self._hold_reason = reason

    def _hold_command(self) -> Optional[np.ndarray]:
        if self._hold_policy is HoldPolicy.ZERO:
            return np.zeros(self._action_dim)
        return None if self._last_command is None else self._last_command.copy()

"""Does a client's set-up fit the model the server serves? Checked against the server's metadata.

A robot stack configured for one model and pointed at a server running another would send requests
the server must refuse (a state of the wrong length) or, worse, that it accepts (cameras in another
order, an action row read with the wrong layout). The client compares what it sends and plays with
what the server's ``/vla/inference/metadata`` says, and refuses to run on any difference, naming it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence


@dataclass(frozen=True)
class ServedModel:
    """What ``vla_msgs/ModelMetadata`` says about the served model."""

    camera_names: Sequence[str]
    state_dim: int
    action_dim: int
    uses_lidar: bool


def setup_mismatches(cameras: Sequence[str], state_dim: int, action_dim: int, served: ServedModel) -> List[str]:
    """One line per parameter of the client that does not fit ``served``; empty when all fit."""
    found = []
    if list(cameras) != list(served.camera_names):
        found.append(f"camera_names: this client sends {list(cameras)}, the server expects {list(served.camera_names)} "
                     "(images in that order)")
    if state_dim != served.state_dim:
        found.append(f"state_dim: this client sends {state_dim} values, the served model reads {served.state_dim}")
    if action_dim != served.action_dim:
        found.append(f"action_dim: this client plays rows of {action_dim}, the served model answers {served.action_dim}")
    return found

"""Declaring ROS parameters with full descriptors in one line each.

Every node parameter carries a description, its range where it has one, and ``read_only`` where
changing it live makes no sense; defaults live in ``config/*.yaml`` and in the declaration.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter


def declare(
    node: Node,
    name: str,
    default: Any,
    description: str,
    *,
    int_range: Optional[Sequence[int]] = None,
    float_range: Optional[Sequence[float]] = None,
    read_only: bool = False,
    choices: Optional[Sequence[str]] = None,
) -> Any:
    """Declare one parameter and return its (possibly overridden) value."""
    descriptor = ParameterDescriptor(description=description, read_only=read_only)
    if int_range is not None:
        descriptor.integer_range = [IntegerRange(from_value=int_range[0], to_value=int_range[1], step=1)]
    if float_range is not None:
        descriptor.floating_point_range = [
            FloatingPointRange(from_value=float(float_range[0]), to_value=float(float_range[1]), step=0.0)
        ]
    if choices is not None:
        descriptor.additional_constraints = "one of: " + ", ".join(choices)
    if isinstance(default, list) and not default:
        value = node.declare_parameter(name, Parameter.Type.STRING_ARRAY, descriptor)
    else:
        value = node.declare_parameter(name, default, descriptor)
    return value.value

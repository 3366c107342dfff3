"""Synthetic robot, launch harness and end-to-end checks for vla_inference."""

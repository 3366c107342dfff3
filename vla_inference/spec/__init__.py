"""The shared contract, the ground floor every other part imports.

Model config, engine I/O spec, tokenizer, observation packing, flow schedule, manifest and the
interface's names and limits. Plain Python and NumPy: nothing here imports rclpy, torch or any
other part of this package, so a serving host, a training host and a test can all read it.
"""

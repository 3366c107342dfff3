"""The full-size GPU check's own arithmetic, run small on the CPU (where both sides must agree)."""
import dataclasses

from vla_inference.lab.pi05_full_check import run
from vla_inference.spec.config import BackboneConfig, ExpertConfig, VisionConfig, pi05_lerobot


def test_the_check_reports_its_comparisons_and_finds_cpu_equal_to_itself():
    small = dataclasses.replace(
        pi05_lerobot(), text_vocab_size=512,
        vision=VisionConfig(image_size=224, patch_size=14, width=32, depth=1, num_heads=2, mlp_dim=64),
        backbone=BackboneConfig(width=32, depth=2, num_heads=8, num_kv_heads=1, head_dim=8, mlp_dim=64),
        expert=ExpertConfig(width=16, mlp_dim=32))
    results = run(seed=0, cfg=small, device="cpu")
    fp32 = results["fp32_cuda_vs_cpu"]
    assert fp32["masks_equal"] and fp32["prefix_kv_max_abs"] == 0.0 and fp32["velocity_max_abs"] == 0.0
    bf16 = results["bf16_cuda_vs_fp32_cpu"]
    assert 0.0 < bf16["chunk_max_abs"] < bf16["chunk_scale"]  # bf16 rounding shows, but stays below the scale
    assert bf16["endpoint_error_cm"] >= 0.0 and bf16["endpoint_path_length_cm"] > 0.0

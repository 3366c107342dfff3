"""A LeRobot pi0.5 checkpoint through this project's loader and model, against LeRobot's own outputs.

The checkpoint (test/data/pi05_tiny_checkpoint) was written by LeRobot 0.4.4's ``save_pretrained``;
``reference_io.safetensors`` holds what LeRobot's ``PI05Policy`` computed from fixed inputs and noise.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file

from vla_inference.model.export import export_lerobot_checkpoint
from vla_inference.model.pi05 import load_pi05_policy
from vla_inference.runtime.pipeline import InferencePipeline
from vla_inference.spec.lerobot_checkpoint import CheckpointError, read_checkpoint, safetensors_shapes
from vla_inference.spec.manifest import load_manifest
from vla_inference.spec.model_dir import open_model_dir, policy_io
from vla_inference.spec.observation import Observation
from vla_inference.spec.policy_io import FeedEncoder, discretize_state, pi05_prompt
from vla_inference.spec.tokenizer import SentencePieceFile, load_tokenizer_file, pad_ids

CHECKPOINT = Path(__file__).parent / "data" / "pi05_tiny_checkpoint"
SIGLIP_HEADS = 4  # the tiny SigLIP's head count: its shapes cannot carry it
PARITY_ATOL = 1e-4


@pytest.fixture(scope="module")
def checkpoint():
    return read_checkpoint(CHECKPOINT, vision_num_heads=SIGLIP_HEADS)


@pytest.fixture(scope="module")
def policy(checkpoint):
    torch.manual_seed(0)
    return load_pi05_policy(checkpoint)


@pytest.fixture(scope="module")
def reference():
    return load_file(str(CHECKPOINT / "reference_io.safetensors"))


def engine_feeds(images: np.ndarray, tokens: np.ndarray, mask: np.ndarray) -> dict:
    """Vision-engine feeds from LeRobot's [0, 1] camera images [B, C, 3, H, W] and prompt ids."""
    batch, cameras = images.shape[:2]
    return {"images": torch.from_numpy((images * 2 - 1).astype(np.float32)),
            "camera_mask": torch.ones(batch, cameras, dtype=torch.bool),
            "lidar_range": torch.zeros(batch, 1, 64, 1024), "lidar_mask": torch.zeros(batch, dtype=torch.bool),
            "text_tokens": torch.from_numpy(tokens), "text_mask": torch.from_numpy(mask),
            "state": torch.zeros(batch, 32)}


def test_sizes_come_from_the_tensor_shapes(checkpoint):
    sizes = json.loads((CHECKPOINT / "reference_io.json").read_text())["tiny_sizes"]
    cfg = checkpoint.config
    assert json.loads((CHECKPOINT / "config.json").read_text())["paligemma_variant"] == "gemma_2b"  # a name, not a size
    for gemma, width, mlp in ((sizes["gemma"]["gemma_2b"], cfg.backbone.width, cfg.backbone.mlp_dim),
                              (sizes["gemma"]["gemma_300m"], cfg.expert.width, cfg.expert.mlp_dim)):
        assert (width, mlp) == (gemma["width"], gemma["mlp_dim"])
        assert (cfg.backbone.depth, cfg.backbone.num_heads, cfg.backbone.num_kv_heads, cfg.backbone.head_dim) == (
            gemma["depth"], gemma["num_heads"], gemma["num_kv_heads"], gemma["head_dim"])
    siglip = sizes["siglip"]
    assert (cfg.vision.width, cfg.vision.mlp_dim, cfg.vision.depth, cfg.vision.patch_size, cfg.vision.image_size) == (
        siglip["hidden_size"], siglip["intermediate_size"], siglip["num_hidden_layers"], siglip["patch_size"],
        siglip["image_size"])
    assert cfg.text_vocab_size == sizes["vocab_size"] and cfg.text_max_len == 200
    assert (cfg.action_horizon, cfg.action_dim, cfg.state_dim) == (50, 32, 32)
    assert cfg.prefix_len == 3 * 256 + 200 and not cfg.uses_lidar


def test_the_robot_interface_follows_the_checkpoint(checkpoint):
    io = checkpoint.io
    assert io.camera_keys == ("observation.images.base_0_rgb", "observation.images.left_wrist_0_rgb",
                              "observation.images.right_wrist_0_rgb")
    assert (io.state_dim, io.action_dim) == (8, 7)
    assert io.state_norm.mode == io.action_norm.mode == "QUANTILES"
    assert io.tokenizer_file == "tiny_tokenizer/tokenizer.json"


def test_model_space_actions_match_lerobot(policy, checkpoint, reference):
    images = np.stack([reference[f"batch.{key}"] for key in checkpoint.io.camera_keys], axis=1)
    feeds = engine_feeds(images, reference["batch.observation.language.tokens"],
                         reference["batch.observation.language.attention_mask"])
    chunk = policy.sample(feeds, 10, torch.from_numpy(reference["noise"])).numpy()
    assert np.abs(chunk[..., :7] - reference["actions"]).max() <= PARITY_ATOL


def test_prompt_and_post_processed_actions_match_lerobot(policy, checkpoint, reference):
    encoder = FeedEncoder(checkpoint.config, checkpoint.io, CHECKPOINT)
    task = json.loads((CHECKPOINT / "reference_io.json").read_text())["raw_task"]
    tokens, mask = encoder.prompt_tokens(task, reference["raw.observation.state"])
    assert np.array_equal(tokens, reference["pipeline.tokens"][0])
    assert np.array_equal(mask, reference["pipeline.attention_mask"][0])
    images = np.stack([reference[f"raw.{key}"] for key in checkpoint.io.camera_keys])[None]
    chunk = policy.sample(engine_feeds(images, tokens[None], mask[None]), 10, torch.from_numpy(reference["noise"][:1]))
    actions = encoder.actions(chunk.numpy())
    assert actions.shape == (1, 50, 7)
    assert np.abs(actions - reference["pipeline.actions"]).max() <= PARITY_ATOL


def test_state_bins_and_prompt_follow_lerobot():
    assert discretize_state(np.array([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0])).tolist() == [-1, 0, 128, 255, 255, 255]
    prompt = pi05_prompt(" pick_up\nthe cube ", np.array([0.0], np.float32), 3)
    assert prompt == "Task: pick up the cube, State: 128 128 128;\nAction: "


def test_an_lerobot_directory_opens_as_a_model_dir(tmp_path):
    with pytest.raises(CheckpointError, match="vision_num_heads"):
        open_model_dir(CHECKPOINT)  # 48 wide: not So400m's 72-wide heads, so the count must be given
    manifest = open_model_dir(CHECKPOINT, vision_num_heads=SIGLIP_HEADS)
    assert manifest.config.architecture == "pi05" and manifest.engines == {}
    assert manifest.weights_path == CHECKPOINT / "model.safetensors"
    assert policy_io(manifest).action_dim == 7


def _copy_without(tmp_path: Path, *names: str) -> Path:
    target = tmp_path / "checkpoint"
    shutil.copytree(CHECKPOINT, target, ignore=shutil.ignore_patterns(*names))
    return target


def test_a_checkpoint_without_a_tokenizer_names_what_is_missing(tmp_path):
    bare = _copy_without(tmp_path, "tiny_tokenizer")
    with pytest.raises(CheckpointError, match="tokenizer_path"):
        read_checkpoint(bare, vision_num_heads=SIGLIP_HEADS)
    found = read_checkpoint(bare, SIGLIP_HEADS, tokenizer_path=CHECKPOINT / "tiny_tokenizer" / "tokenizer.json")
    assert Path(found.io.tokenizer_file).is_absolute()
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(bare, SIGLIP_HEADS, tokenizer_path=tmp_path / "nowhere.model")


def test_missing_statistics_are_named(tmp_path):
    bare = _copy_without(tmp_path, "policy_postprocessor*")
    with pytest.raises(CheckpointError, match="policy_postprocessor.json"):
        read_checkpoint(bare, vision_num_heads=SIGLIP_HEADS)


def _rewrite_weights(tmp_path: Path, change) -> Path:
    target = _copy_without(tmp_path)
    tensors = load_torch(str(target / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(target / "model.safetensors"))
    return target


def test_a_missing_or_unknown_tensor_is_refused(tmp_path):
    name = "model.time_mlp_in.weight"
    gone = _rewrite_weights(tmp_path / "a", lambda t: t.pop(name))
    with pytest.raises(ValueError, match="missing tensors"):
        load_pi05_policy(read_checkpoint(gone, vision_num_heads=SIGLIP_HEADS))
    extra = _rewrite_weights(tmp_path / "b", lambda t: t.__setitem__("model.state_proj.weight", torch.zeros(2, 2)))
    with pytest.raises(ValueError, match="unmapped tensors.*state_proj"):
        load_pi05_policy(read_checkpoint(extra, vision_num_heads=SIGLIP_HEADS))


def test_the_expert_must_share_the_prefix_models_attention(tmp_path):
    def shrink(tensors):
        key = "model.paligemma_with_expert.gemma_expert.model.layers.0.self_attn.k_proj.weight"
        tensors[key] = tensors[key][:8].clone()

    broken = _rewrite_weights(tmp_path, shrink)
    assert safetensors_shapes(broken / "model.safetensors")[
        "model.paligemma_with_expert.gemma_expert.model.layers.0.self_attn.k_proj.weight"] == (8, 32)
    with pytest.raises(CheckpointError, match="must match the prefix model"):
        read_checkpoint(broken, vision_num_heads=SIGLIP_HEADS)


def _as_lerobot_05(tmp_path: Path) -> Path:
    """The tiny checkpoint as LeRobot 0.5 saves it: the vocabulary table under its own name, and a
    ``lm_head`` that fine-tuning left stale (here: scrambled)."""
    def untie(tensors):
        head = "model.paligemma_with_expert.paligemma.lm_head.weight"
        tensors["model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"] = tensors[head].clone()
        tensors[head] = torch.randn_like(tensors[head])

    return _rewrite_weights(tmp_path, untie)


def test_a_lerobot_05_checkpoint_reads_its_own_embedding_and_an_unpadded_state(tmp_path, reference):
    converted = _as_lerobot_05(tmp_path)
    checkpoint = read_checkpoint(converted, vision_num_heads=SIGLIP_HEADS)
    assert checkpoint.layout == "lerobot-0.5" and checkpoint.io.prompt_state_width is None
    policy = load_pi05_policy(checkpoint)
    images = np.stack([reference[f"batch.{key}"] for key in checkpoint.io.camera_keys], axis=1)
    feeds = engine_feeds(images, reference["batch.observation.language.tokens"],
                         reference["batch.observation.language.attention_mask"])
    chunk = policy.sample(feeds, 10, torch.from_numpy(reference["noise"])).numpy()
    assert np.abs(chunk[..., :7] - reference["actions"]).max() <= PARITY_ATOL  # the stale lm_head is not read
    encoder = FeedEncoder(checkpoint.config, checkpoint.io, converted)
    tokens, mask = encoder.prompt_tokens("pick up the red block", reference["raw.observation.state"])
    padded, padded_mask = FeedEncoder(*_tiny_io(), CHECKPOINT).prompt_tokens("pick up the red block",
                                                                             reference["raw.observation.state"])
    assert mask.sum() == padded_mask.sum() - 24  # 8 state values in the prompt instead of 32


def _tiny_io():
    checkpoint = read_checkpoint(CHECKPOINT, vision_num_heads=SIGLIP_HEADS)
    return checkpoint.config, checkpoint.io


def test_relative_actions_are_refused_by_name(tmp_path):
    target = _copy_without(tmp_path)
    config = json.loads((target / "config.json").read_text())
    config["use_relative_actions"] = True
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="use_relative_actions"):
        read_checkpoint(target, vision_num_heads=SIGLIP_HEADS)


def test_the_exported_engines_serve_on_onnx_runtime_as_the_checkpoint_does_on_torch(tmp_path):
    exported = tmp_path / "exported"
    export_lerobot_checkpoint(CHECKPOINT, exported, vision_num_heads=SIGLIP_HEADS)
    assert (exported / "tokenizer" / "tokenizer.json").is_file()
    assert policy_io(load_manifest(exported)).tokenizer_file == "tokenizer/tokenizer.json"
    rng = np.random.default_rng(9)
    obs = Observation(images=[rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(3)],
                      text="stack the blocks", state=rng.uniform(-1, 1, 8).astype(np.float32))
    chunks = {}
    for backend, directory, options in (("torch", CHECKPOINT, {"vision_num_heads": SIGLIP_HEADS}),
                                        ("onnxruntime", exported, {})):
        with InferencePipeline.from_model_dir(directory, backend=backend, num_samples=4, warmup_runs=0,
                                              **options) as pipeline:
            chunks[backend] = pipeline.infer(obs, steps=10, seed=4).actions
    assert chunks["torch"].shape == (50, 7)
    assert np.abs(chunks["torch"] - chunks["onnxruntime"]).max() <= PARITY_ATOL


def test_a_sentencepiece_tokenizer_file_adds_bos_and_pads(tmp_path):
    import sentencepiece

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["Task: pick up the red block, State: 1 2 3;", "Action: move the arm"] * 50))
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "tokenizer"),
                                             vocab_size=64, hard_vocab_limit=False, pad_id=0, unk_id=3, bos_id=2,
                                             eos_id=1, minloglevel=2)
    tokenizer = load_tokenizer_file(tmp_path)
    assert isinstance(tokenizer, SentencePieceFile) and tokenizer.pad_id == 0
    ids = tokenizer.ids("Task: pick up the red block")
    assert ids[0] == 2 and len(ids) > 3
    tokens, mask = pad_ids(ids, 8, tokenizer.pad_id)
    assert mask.sum() == min(len(ids), 8) and (tokens[mask.sum():] == 0).all()

"""LeRobot's whole pi0.5 pipeline on given robot inputs: what a served request must answer.

Runs INSIDE the reference venv (``pi05_reference.reference_venv()``)::

    <venv>/bin/python test/pi05_serve_oracle.py --checkpoint DIR --shape-json SIZES --inputs IN.npz --out OUT.npz

``IN.npz`` holds one observation as a robot sends it (``images`` uint8 [C, H, W, 3] in the
checkpoint's camera order, ``state`` float32 [state_dim], ``task`` the command) and ``noise``
float32 [K, 50, 32]. The checkpoint loads with ``PI05Policy.from_pretrained`` at the sizes of
``SIZES`` (the kit's ``reference_io.json`` ``tiny_sizes`` layout), its saved pre/postprocessors with
``make_pre_post_processors`` (the tokenizer step gets the checkpoint's own tokenizer folder, LeRobot
would download PaliGemma's), and each noise draw goes through preprocessor -> ``predict_action_chunk``
-> postprocessor. ``OUT.npz`` holds ``actions`` float32 [K, 50, action_dim] in robot units.
"""
import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import torch


@contextlib.contextmanager
def sized_as(sizes: dict):
    """While active, LeRobot's pi0.5 constructors build the Gemmas and SigLIP at ``sizes``."""
    from lerobot.policies.pi05 import modeling_pi05 as m

    names = ("get_gemma_config", "PaliGemmaForConditionalGeneration", "GemmaForCausalLM")
    saved = {name: getattr(m, name) for name in names}
    gemma, siglip, vocab = sizes["gemma"], sizes["siglip"], sizes["vocab_size"]

    def build_vlm(config):
        config._vocab_size = config.image_token_index = config.text_config.vocab_size = vocab
        config.projection_dim = config.hidden_size = gemma["gemma_2b"]["width"]
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            setattr(config.vision_config, key, siglip[key])
        config.vision_config.projection_dim = gemma["gemma_2b"]["width"]
        return saved["PaliGemmaForConditionalGeneration"](config=config)

    def build_expert(config):
        config.vocab_size = vocab
        return saved["GemmaForCausalLM"](config=config)

    m.get_gemma_config = lambda variant: m.GemmaConfig(**gemma[variant])
    m.PaliGemmaForConditionalGeneration = build_vlm
    m.GemmaForCausalLM = build_expert
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(m, name, value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--shape-json", type=Path, required=True, help="JSON with a tiny_sizes-style 'sizes' object")
    parser.add_argument("--tokenizer", type=Path, required=True, help="the checkpoint's tokenizer folder")
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.pi05.modeling_pi05 import PI05Policy
    from transformers import AutoTokenizer

    sizes = json.loads(args.shape_json.read_text())["sizes"]
    with sized_as(sizes):
        policy = PI05Policy.from_pretrained(str(args.checkpoint)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(args.tokenizer))
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(args.checkpoint),
                                         preprocessor_overrides={"tokenizer_processor": {"tokenizer": tokenizer}})
    data = np.load(args.inputs)
    cameras = [key for key, feature in policy.config.input_features.items() if feature.type.name == "VISUAL"]
    observation = {key: torch.from_numpy(np.moveaxis(data["images"][i], -1, 0).astype(np.float32) / 255.0)
                   for i, key in enumerate(cameras)}
    observation["observation.state"] = torch.from_numpy(data["state"].astype(np.float32))
    observation["task"] = str(data["task"])
    actions = []
    with torch.no_grad():
        for noise in data["noise"]:
            batch = pre(dict(observation))
            chunk = policy.predict_action_chunk(batch, noise=torch.from_numpy(noise[None]), num_steps=int(data["steps"]))
            actions.append(post(chunk)[0].numpy())
    np.savez(args.out, actions=np.stack(actions).astype(np.float32))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""LeRobot's whole pi0.5 pipeline on given robot inputs: what a served request must answer.

Runs INSIDE the reference venv (``pi05_reference.reference_venv()``)::

    <venv>/bin/python test/pi05_serve_oracle.py --checkpoint DIR --shape-json SIZES --inputs IN.npz --out OUT.npz

``IN.npz`` holds one observation as a robot sends it (``images`` uint8 [C, H, W, 3] in the
checkpoint's camera order, ``state`` float32 [state_dim], ``task`` the command) and ``noise``
float32 [K, 50, 32]. The checkpoint loads with ``PI05Policy.from_pretrained`` at the sizes of
``SIZES`` (the kit's ``reference_io.json`` ``tiny_sizes`` layout, built through the oracle's
``shrunk_constructors``), its saved pre/postprocessors with
``make_pre_post_processors`` (the tokenizer step gets the checkpoint's own tokenizer folder, LeRobot
would download PaliGemma's), and each noise draw goes through preprocessor -> ``predict_action_chunk``
-> postprocessor. ``OUT.npz`` holds ``actions`` float32 [K, 50, action_dim] in robot units.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from pi05_oracle import Shape, shrunk_constructors


def shape_of(sizes: dict, config: dict) -> Shape:
    """The oracle's ``Shape`` for a checkpoint described by ``sizes`` (``tiny_sizes`` layout) and its config.json."""
    vlm, expert, siglip = sizes["gemma"]["gemma_2b"], sizes["gemma"]["gemma_300m"], sizes["siglip"]
    features = config["input_features"]
    cameras = tuple(k for k, v in features.items() if v["type"] == "VISUAL")
    state = next(v["shape"][0] for v in features.values() if v["type"] == "STATE")
    action = next(v["shape"][0] for v in config["output_features"].values() if v["type"] == "ACTION")
    return Shape(depth=vlm["depth"], head_dim=vlm["head_dim"], num_kv_heads=vlm["num_kv_heads"],
                 vlm_width=vlm["width"], vlm_mlp=vlm["mlp_dim"], expert_width=expert["width"],
                 expert_mlp=expert["mlp_dim"], vocab=sizes["vocab_size"], expert_vocab=sizes["vocab_size"],
                 siglip_hidden=siglip["hidden_size"], siglip_intermediate=siglip["intermediate_size"],
                 siglip_layers=siglip["num_hidden_layers"], siglip_heads=siglip["num_attention_heads"],
                 state_dim=state, action_dim=action, cameras=cameras)


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
    config = json.loads((args.checkpoint / "config.json").read_text())
    with shrunk_constructors(shape_of(sizes, config)):
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

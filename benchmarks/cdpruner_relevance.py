#!/usr/bin/env python
"""Does CDPruner's relevance point at what the question names, on the shipped demo VLM?

For every question of the first ``--scenes`` test scenes that names exactly one object ("red circle" ...), the
relevance slimvlm's pipeline gives CDPruner (mean cosine between the projected visual tokens and the LM input
embeddings of the instruction, ``slimvlm.pipeline.prompt_signals``) is compared between the patches inside the
object's box and the others: the AUC (share of (inside, outside) pairs ranked the right way; 0.5 = no signal).
The same with the object's phrase token alone shows whether the sign is right.

Usage: python benchmarks/cdpruner_relevance.py [--scenes 30]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

try:
    import slimvlm  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from slimvlm.demo import scenes  # noqa: E402
from slimvlm.demo.app import load_shipped  # noqa: E402
from slimvlm.demo.model import make_inputs  # noqa: E402
from slimvlm.pipeline import encode, prompt_signals  # noqa: E402

GRID = 24


def auc(rel: torch.Tensor, inside: torch.Tensor) -> float:
    a, b = rel[inside], rel[~inside]
    return float((a[:, None] > b[None, :]).float().mean())


def inside_box(scene, box) -> torch.Tensor:
    h, w = scene.image.shape[:2]
    cx, cy = (np.arange(GRID) + 0.5) * w / GRID, (np.arange(GRID) + 0.5) * h / GRID
    x0, y0, x1, y1 = box
    return torch.tensor([[x0 <= cx[j] < x1 and y0 <= cy[i] < y1 for j in range(GRID)] for i in range(GRID)]).flatten()


@torch.no_grad()
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=30)
    args = ap.parse_args(argv)
    model, tok = load_shipped()
    embed = model.get_input_embeddings()
    whole, phrase = [], []
    for seed in scenes.split_seeds("test", args.scenes):
        scene = scenes.make_scene(seed)
        for qa in scenes.questions(scene):
            named = [o for o in scene.objects if f"{o.color} {o.kind}" in qa.question]
            if len(named) != 1:
                continue
            inside = inside_box(scene, named[0].bbox)
            if not bool(inside.any()):
                continue
            inputs = make_inputs(model, tok, [scene], [qa.question])
            items = encode(model, inputs, "cdpruner")
            (sig,) = prompt_signals(model, inputs, items, "cdpruner")
            vis = F.normalize(items[0].tokens.float(), dim=-1)
            whole.append(auc((vis @ F.normalize(sig["text_embeds"].float(), dim=-1).T).mean(-1), inside))
            word = embed(torch.tensor([tok.convert_tokens_to_ids(f"{named[0].color} {named[0].kind}")]))
            phrase.append(auc((vis @ F.normalize(word.float(), dim=-1).T)[:, 0], inside))
    print(f"{len(whole)} questions naming one object ({args.scenes} test scenes)")
    print(f"relevance over the whole instruction (what cdpruner uses): mean AUC {np.mean(whole):.3f}, "
          f"median {np.median(whole):.3f}")
    print(f"the object's phrase token alone: mean AUC {np.mean(phrase):.3f}, median {np.median(phrase):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

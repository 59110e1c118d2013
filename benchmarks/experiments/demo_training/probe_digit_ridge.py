"""Closed-form (ridge) digit readouts of every patch under a digit (session 10): the best a per-patch / per-block
readout can do with all training digits, and what a mean over the digit's patches of those readouts gives per
digit — the read a grounded attention head makes. Inputs: the standardised tower feature of the patch, its 2 × 2
block (itself, left, upper, upper-left) concatenated, and the shipped model's layer-0 input there (projector
output after ``input_layernorm``).

    python probe_digit_ridge.py [N_TRAIN_SCENES=1500] [MODEL_DIR=the shipped weights]"""
import sys

import torch
import torch.nn.functional as F

from cached import EXP_DIR
from digit_probe import grid_and_block
from slimvlm.demo import scenes
from slimvlm.demo.app import WEIGHTS_DIR
from slimvlm.demo.model import load_demo_model
from slimvlm.demo.train import box_patches, feature_stats

torch.set_num_threads(1)
tf = torch.load(EXP_DIR + "/train.pt", weights_only=False)[0]
vf = torch.load(EXP_DIR + "/val.pt", weights_only=False)[0]
mean, std = feature_stats(tf[:500])
model, _ = load_demo_model(sys.argv[2] if len(sys.argv) > 2 else str(WEIGHTS_DIR))
proj, ln0 = model.model.multi_modal_projector, model.model.language_model.layers[0].input_layernorm


def digit_patches(seeds, feats):
    """``(patch, block, layer-0 input, digit, which digit)`` over every patch under a digit, as tensors."""
    cols = [[], [], [], [], []]
    n_digits = 0
    for i, s in enumerate(seeds):
        digits = [o for o in scenes.make_scene(s).objects if o.digit is not None]
        if not digits:
            continue
        with torch.no_grad():
            e = ln0(proj(feats[i].float())).view(24, 24, -1)
        x, block = grid_and_block(feats[i], mean, std)
        for o in digits:
            for p in box_patches(o.digit_bbox):
                r, c = divmod(p, 24)
                for col, v in zip(cols, (x[r, c], block(r, c), e[r, c], o.digit, n_digits)):
                    col.append(v)
            n_digits += 1
    return [torch.stack(c).double() for c in cols[:3]] + [torch.tensor(cols[3]), torch.tensor(cols[4])]


tr = digit_patches(scenes.split_seeds("train", int(sys.argv[1]) if len(sys.argv) > 1 else 1500), tf)
va = digit_patches(scenes.split_seeds("val", 128), vf)
G = int(va[4].max()) + 1
print(f"train: {len(tr[3])} patches of {int(tr[4].max()) + 1} digits; validation: {len(va[3])} patches of {G} digits")
Y = F.one_hot(tr[3], 10).double()
truth = torch.zeros(G, dtype=torch.long).index_copy(0, va[4], va[3])
for name, k in (("patch", 0), ("2x2 block", 1), ("layer-0 input", 2)):
    mu = tr[k].mean(0)
    X = tr[k] - mu
    for lam in (10.0, 100.0, 1000.0):
        W = torch.linalg.solve(X.T @ X + lam * torch.eye(X.shape[1], dtype=X.dtype), X.T @ (Y - Y.mean(0)))
        train_acc = ((X @ W).argmax(-1) == tr[3]).double().mean()
        logits = (va[k] - mu) @ W
        per_digit = torch.zeros(G, 10, dtype=logits.dtype).index_add(0, va[4], logits).argmax(-1)
        print(f"{name:13s} lambda {lam:5.0f}: training patches {train_acc:.3f}, validation patches "
              f"{(logits.argmax(-1) == va[3]).double().mean():.3f}, validation digits (mean of their patches' "
              f"readouts) {(per_digit == truth).double().mean():.3f}")

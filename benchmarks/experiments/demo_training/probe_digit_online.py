"""Online linear digit probes (session 10): one pass over the cached training scenes, 8 scenes a step, AdamW
(betas 0.9 / 0.98, as ``slimvlm demo train``), on every patch under a digit — its standardised tower feature alone
or its 2 × 2 block (itself, left, upper, upper-left; zeros off the image) concatenated. How fast a dedicated
readout learns the digit at the pace of a training run (the LM's per-patch digit lens stayed at chance).

    python probe_digit_online.py [N_TRAIN_SCENES=1500] [LR=5e-4]"""
import sys

import numpy as np
import torch
import torch.nn.functional as F

from cached import EXP_DIR
from digit_probe import grid_and_block
from slimvlm.demo import scenes
from slimvlm.demo.train import box_patches, feature_stats

torch.set_num_threads(1)
tf = torch.load(EXP_DIR + "/train.pt", weights_only=False)[0]
vf = torch.load(EXP_DIR + "/val.pt", weights_only=False)[0]
mean, std = feature_stats(tf[:500])


def digit_patches(seeds, feats):
    """Per scene, ``(patch feature, 2 x 2 block, digit)`` for every patch under a digit."""
    out = []
    for i, s in enumerate(seeds):
        x, block = grid_and_block(feats[i], mean, std)
        rows = []
        for o in scenes.make_scene(s).objects:
            for p in box_patches(o.digit_bbox) if o.digit is not None else ():
                r, c = divmod(p, 24)
                rows.append((x[r, c], block(r, c), o.digit))
        out.append(rows)
    return out


n = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
lr = float(sys.argv[2]) if len(sys.argv) > 2 else 5e-4
tr = digit_patches(scenes.split_seeds("train", n), tf)
va = [r for rows in digit_patches(scenes.split_seeds("val", 128), vf) for r in rows]
print("train patches", sum(map(len, tr)), "val patches", len(va), flush=True)
for name, k, d in (("patch", 0, 384), ("block", 1, 1536)):
    torch.manual_seed(0)
    lin = torch.nn.Linear(d, 10)
    opt = torch.optim.AdamW(lin.parameters(), lr=lr, betas=(0.9, 0.98))
    losses = []
    for step in range(0, len(tr), 8):
        rows = [r for rows in tr[step : step + 8] for r in rows]
        if not rows:
            continue
        loss = F.cross_entropy(lin(torch.stack([r[k] for r in rows])), torch.tensor([r[2] for r in rows]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step // 8 + 1) % 50 == 0:
            with torch.no_grad():
                acc = (lin(torch.stack([r[k] for r in va])).argmax(-1) == torch.tensor([r[2] for r in va])).float().mean()
            print(f"{name} step {step // 8 + 1}: online loss {np.mean(losses[-50:]):.3f} (ln 10 = 2.303), "
                  f"validation patches {acc:.3f}", flush=True)

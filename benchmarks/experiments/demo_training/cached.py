"""The tower features cached by cache.py: ``load() -> ((train_feats, train_pools), (val_feats, val_pools))``.

Training features of further scenes cached by cache_more.py (``train_<start>_<stop>.pt``) are appended in seed
order (pools None then: run_g.py rebuilds the pools from the generator)."""
import glob
import os
import re

import torch

EXP_DIR = os.environ.get("EXP_DIR", "/tmp/exp")


def load():
    train = torch.load(EXP_DIR + "/train.pt", weights_only=False)
    val = torch.load(EXP_DIR + "/val.pt", weights_only=False)
    extra = sorted((int(re.findall(r"train_(\d+)_", p)[0]), p) for p in glob.glob(EXP_DIR + "/train_*_*.pt"))
    if extra:
        feats = [train[0]]
        for start, path in extra:
            if start != sum(f.shape[0] for f in feats):
                raise ValueError(f"{path} does not continue the cached scenes (have {sum(f.shape[0] for f in feats)})")
            feats.append(torch.load(path, weights_only=False)[0])
        train = (torch.cat(feats), None)
    return train, val

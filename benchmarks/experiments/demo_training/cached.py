"""The tower features cached by cache.py: ``load() -> ((train_feats, train_pools), (val_feats, val_pools))``."""
import os

import torch

EXP_DIR = os.environ.get("EXP_DIR", "/tmp/exp")


def load():
    train = torch.load(EXP_DIR + "/train.pt", weights_only=False)
    val = torch.load(EXP_DIR + "/val.pt", weights_only=False)
    return train, val

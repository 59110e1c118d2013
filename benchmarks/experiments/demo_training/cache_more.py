"""Cache the tower features of training scenes [start, stop) into $EXP_DIR/train_<start>_<stop>.pt, to extend
what cache.py wrote (``cached.load()`` appends them)."""
import os, sys, time
import torch
from slimvlm.demo import scenes
from slimvlm.demo.train import cache_features
torch.set_num_threads(2)
start, stop = int(sys.argv[1]), int(sys.argv[2])
t = time.time()
f, _ = cache_features(scenes.split_seeds("train", stop)[start:], progress=False)
torch.save((f, None), os.environ.get("EXP_DIR", "/tmp/exp") + f"/train_{start}_{stop}.pt")
print("done", f.shape, time.time() - t)

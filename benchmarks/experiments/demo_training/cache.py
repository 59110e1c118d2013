import os
import torch, time, sys
from slimvlm.demo import scenes
from slimvlm.demo.model import build_tokenizer
from slimvlm.demo.train import cache_features
torch.set_num_threads(2)
tok = build_tokenizer()
n = int(sys.argv[1])
t=time.time()
vf, vp = cache_features(scenes.split_seeds("val", 128), tok, variants=1, progress=False)
torch.save((vf, vp), os.environ.get("EXP_DIR", "/tmp/exp") + "/val.pt")
tf, tp = cache_features(scenes.split_seeds("train", n), tok, variants=3, progress=False)
torch.save((tf, tp), os.environ.get("EXP_DIR", "/tmp/exp") + "/train.pt")
print("done", time.time()-t)

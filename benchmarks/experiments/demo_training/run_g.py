import os
import torch, time, sys, json
from slimvlm.demo import scenes
from slimvlm.demo.model import build_tokenizer
from slimvlm.demo.train import train, evaluate, question_pool
args = json.loads(sys.argv[1])
torch.set_num_threads(args.pop("threads", 2))
tf, _ = torch.load(os.environ.get("EXP_DIR", "/tmp/exp") + "/train.pt", weights_only=False)
vf, _ = torch.load(os.environ.get("EXP_DIR", "/tmp/exp") + "/val.pt", weights_only=False)
n = args.pop("n", tf.shape[0]); nv = args.pop("nv", vf.shape[0])
tok = build_tokenizer()
t = time.time()
tp = [question_pool(scenes.make_scene(s), tok, 3) for s in scenes.split_seeds("train", n)]
vp = [question_pool(scenes.make_scene(s), tok, 1) for s in scenes.split_seeds("val", nv)]
print("pools", time.time() - t, flush=True)
lm = args.pop("lm", None); out = args.pop("out", None)
model, tok, hist = train(out, features=(tf[:n], tp, vf[:nv], vp), progress=False, lm=lm, **args)
print("step_s", hist["step_s"], "total", time.time() - t)
print("after fold", evaluate(model, tok, vf[:nv], vp))

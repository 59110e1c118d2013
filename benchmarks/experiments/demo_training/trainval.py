# train-vs-val accuracy of a saved (stock, folded) checkpoint: is the LM memorising training images?
import os, sys, torch
from slimvlm.demo import scenes
from slimvlm.demo.model import load_demo_model
from slimvlm.demo.train import evaluate, question_pool
torch.set_num_threads(1)
ck = sys.argv[1]; n = int(sys.argv[2]) if len(sys.argv) > 2 else 64
model, tok = load_demo_model(ck)
from cached import load
(tf, _), (vf, _) = load()
tp = [question_pool(scenes.make_scene(s), tok, 1) for s in scenes.split_seeds("train", n)]
vp = [question_pool(scenes.make_scene(s), tok, 1) for s in scenes.split_seeds("val", n)]
with torch.no_grad():
    print("train", evaluate(model, tok, tf[:n], tp))
    print("val  ", evaluate(model, tok, vf[:n], vp))

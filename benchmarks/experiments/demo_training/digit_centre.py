# continuation experiments on digits: digit grounding target + digit question repetition (monkeypatched)
import sys, json, time
import torch
import slimvlm.demo.train as T
from slimvlm.demo import scenes
from slimvlm.demo.model import build_tokenizer
from digit_probe import patch_at
args = json.loads(sys.argv[1])
torch.set_num_threads(args.pop("threads", 2))
target = args.pop("digit_target", "box"); rep = args.pop("digit_repeat", 1)
orig = T.question_anchors
def anchors(scene, qa, tokens):
    out = orig(scene, qa, tokens)
    if qa.qtype == "digit" and target == "centre":
        o = scene.objects[qa.objects[0]]
        x0, y0, x1, y1 = o.digit_bbox; cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        out = [(k, [patch_at(cx, cy)] if ps else ps) for k, ps in out]
    return out
T.question_anchors = anchors
from cached import load
(tf, _), (vf, _) = load()
n = args.pop("n", tf.shape[0]); nv = vf.shape[0]
tok = build_tokenizer(); t = time.time()
def pool(s, v):
    p = T.question_pool(scenes.make_scene(s), tok, v)
    if rep > 1:
        d = [i for i, q in enumerate(p.qtypes) if q == "digit"] * (rep - 1)
        p = T.QAPool(p.tokens + [p.tokens[i] for i in d], p.answers + [p.answers[i] for i in d], p.qtypes + [p.qtypes[i] for i in d], p.anchors + [p.anchors[i] for i in d])
    return p
tp = [pool(s, 8) for s in scenes.split_seeds("train", n)]
vp = [T.question_pool(scenes.make_scene(s), tok, 1) for s in scenes.split_seeds("val", nv)]
print("pools", time.time() - t, "mean pool", sum(len(p.tokens) for p in tp) / len(tp), flush=True)
out = args.pop("out", None)
model, tok, hist = T.train(out, features=(tf[:n], tp, vf, vp), progress=False, **args)
print("step_s", hist["step_s"], "total", time.time() - t)

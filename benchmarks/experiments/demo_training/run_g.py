import torch, time, sys, json
from slimvlm.demo import scenes
from slimvlm.demo.model import build_tokenizer
from slimvlm.demo.train import train, evaluate, question_pool
args = json.loads(sys.argv[1])
torch.set_num_threads(args.pop("threads", 2))
from cached import load
(tf, _), (vf, _) = load()
n = args.pop("n", tf.shape[0]); nv = args.pop("nv", vf.shape[0])
tok = build_tokenizer()
t = time.time()
import inspect
variants = args.get("variants", inspect.signature(train).parameters["variants"].default)  # train()'s default
tp = [question_pool(scenes.make_scene(s), tok, variants) for s in scenes.split_seeds("train", n)]
vp = [question_pool(scenes.make_scene(s), tok, 1) for s in scenes.split_seeds("val", nv)]
only = args.pop("only", None)  # keep only these question types, e.g. ["exist"]
if only:
    from slimvlm.demo.train import QAPool
    def keep(p):
        idx = [i for i, q in enumerate(p.qtypes) if q in only]
        return QAPool([p.tokens[i] for i in idx], [p.answers[i] for i in idx], [p.qtypes[i] for i in idx],
                      [p.anchors[i] for i in idx])
    tp, vp = [keep(p) for p in tp], [keep(p) for p in vp]
print("pools", time.time() - t, flush=True)
lm = args.pop("lm", None); out = args.pop("out", None)
if args.pop("ground_only", False):  # diagnostic: train on the grounding loss alone (answers / anchors weight 0)
    import torch.nn.functional as F
    import slimvlm.demo.train as T
    import types
    T.F = types.SimpleNamespace(**{k: getattr(F, k) for k in dir(F) if not k.startswith("__")})
    T.F.cross_entropy = lambda *a, **k: F.cross_entropy(*a, **k) * 0
model, tok, hist = train(out, features=(tf[:n], tp, vf[:nv], vp), progress=False, lm=lm, **args)
print("step_s", hist["step_s"], "total", time.time() - t)
print("after fold", evaluate(model, tok, vf[:nv], vp))

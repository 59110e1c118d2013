# A model trained with --pick: does what head 0 of layer L hands answer: (its 64-wide output before o_proj, at
# a `larger` question's answer:) hold the answer? Linear probe fitted on the larger questions of N cached training
# scenes, tested on the validation ones; also the model's own answers there. Usage: probe_pick_head.py MODEL N [L]
import sys
import torch
from slimvlm.demo import scenes
from slimvlm.demo.model import load_demo_model
from slimvlm.demo.train import _ids, pack_batch, packed_logits, question_pool
from cached import load
torch.set_num_threads(1)
model, tok = load_demo_model(sys.argv[1])
n_train, layer = int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 2
(tf, _), (vf, _) = load()
attn = model.model.language_model.layers[layer].self_attn
D = model.config.text_config.head_dim if getattr(model.config.text_config, "head_dim", None) else 64


def collect(feats, split, n):
    seeds = scenes.split_seeds(split, n)
    X, y, own = [], [], []
    for start in range(0, n, 8):
        rows = list(range(start, min(start + 8, n)))
        items = []
        for i in rows:
            pool = question_pool(scenes.make_scene(seeds[i]), tok, 4)
            items.append([(pool.tokens[j], pool.answers[j], pool.anchors[j], pool.picks[j])
                          for j, q in enumerate(pool.qtypes) if q == "larger"])
        batch = pack_batch(items, **_ids(tok))
        if not batch["pick"]:
            continue
        seen = {}
        hook = attn.o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__(0, a[0]))
        with torch.no_grad():
            logits, targets = packed_logits(model, feats[rows], batch)
        hook.remove()
        at = (batch["targets"] != -100).nonzero().tolist()[0::2]
        pred = logits[0::2].argmax(-1)
        for r, q, _ in batch["pick"]:
            X.append(seen[0][r, q, :D].float())
            y.append(int(batch["targets"][r, q]))
            own.append(int(pred[at.index([r, q])]) == y[-1])
    return torch.stack(X), torch.tensor(y), sum(own) / len(own)


Xt, yt, own_t = collect(tf, "train", n_train)
Xv, yv, own_v = collect(vf, "val", vf.shape[0])
classes = sorted(set(yt.tolist()) | set(yv.tolist()))
remap = {c: k for k, c in enumerate(classes)}
yt2, yv2 = torch.tensor([remap[c] for c in yt.tolist()]), torch.tensor([remap[c] for c in yv.tolist()])
net_out = len(classes)
torch.manual_seed(0)
mu, sd = Xt.mean(0), Xt.std(0) + 1e-6
lin = torch.nn.Linear(Xt.shape[1], net_out)
opt = torch.optim.AdamW(lin.parameters(), lr=1e-2, weight_decay=0.01)
for _ in range(500):
    loss = torch.nn.functional.cross_entropy(lin((Xt - mu) / sd), yt2)
    opt.zero_grad(); loss.backward(); opt.step()
with torch.no_grad():
    acc_v = (lin((Xv - mu) / sd).argmax(1) == yv2).float().mean().item()
    acc_t = (lin((Xt - mu) / sd).argmax(1) == yt2).float().mean().item()
print(f"{len(yt)} train / {len(yv)} val larger questions; head {layer}.0 output -> answer, linear probe: "
      f"val {acc_v:.3f} (train {acc_t:.3f}); the model's own answers: val {own_v:.3f}, train {own_t:.3f}")

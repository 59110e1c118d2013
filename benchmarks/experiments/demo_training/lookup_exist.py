# isolated lookup + readout: "is there a <colour> <kind>?" answered from one attention over 576 DINOv2 patches
# plus a learned sink, query = Wq(e_colour + e_kind); optional grounding loss. Prints val accuracy over steps.
import os, sys, time, torch, numpy as np, torch.nn.functional as F
from slimvlm.demo import scenes
from slimvlm.demo.train import object_patches, feature_stats
torch.set_num_threads(2); torch.manual_seed(0)
GROUND = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
ROPE = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0  # RoPE base (0 = none); query at position 580, patches 1..576
from cached import load
(tf, _), (vf, _) = load()
mean, std = feature_stats(tf)
C = list(scenes.COLORS); K = list(scenes.KINDS)
def items(split, n, variants):
    out = []
    for i, s in enumerate(scenes.split_seeds(split, n)):
        sc = scenes.make_scene(s)
        for v in range(variants):
            for qa in scenes.questions(sc, None if v == 0 else np.random.default_rng([s, 7, v])):
                if qa.qtype != "exist":
                    continue
                w = scenes.tokenize(qa.question)
                c, k = w[3], w[4]
                out.append((i, C.index(c), K.index(k), sorted({p for j in qa.objects for p in object_patches(sc.objects[j])}), qa.answer == "yes"))
    return out
tr = items("train", 1500, 3); va = items("val", 128, 1)
print(len(tr), len(va), flush=True)
d = 64
proj = torch.nn.Sequential(torch.nn.Linear(384, 256), torch.nn.GELU(), torch.nn.Linear(256, 256))
ec = torch.nn.Embedding(8, 256); ek = torch.nn.Embedding(7, 256); sink = torch.nn.Parameter(torch.randn(1, 256) * 0.02)
Wq = torch.nn.Linear(256, d, bias=False); Wk = torch.nn.Linear(256, d, bias=False); Wv = torch.nn.Linear(256, d, bias=False)
head = torch.nn.Sequential(torch.nn.Linear(d + 256, 256), torch.nn.GELU(), torch.nn.Linear(256, 2))
mods = [proj, ec, ek, Wq, Wk, Wv, head]
ps = [p for m in mods for p in m.parameters()] + [sink]
INIT = float(os.environ.get("INIT", 0))  # > 0: every weight ~ N(0, INIT), biases 0 (the LM's init_weights)
if INIT:
    for m in mods:
        if isinstance(m, torch.nn.Embedding) and os.environ.get("KEEP_EMB"):
            continue  # embeddings stay N(0, 1)
        for name, p in m.named_parameters():
            torch.nn.init.normal_(p, std=INIT) if p.ndim == 2 else torch.nn.init.zeros_(p)
opt = torch.optim.AdamW(ps, lr=2e-3, betas=(0.9, 0.98) if INIT else (0.9, 0.999))
def rope(x, pos):  # Llama's rotate-half RoPE
    inv = ROPE ** (-torch.arange(0, d, 2).float() / d)
    ang = pos[:, None].float() * inv[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin
def run(data, feats, idx):
    b = [data[i] for i in idx]
    f = (feats[[x[0] for x in b]].float() - mean) / std
    h = torch.cat([sink.expand(len(b), 1, 256), proj(f)], 1)
    h = h / (h.norm(dim=-1, keepdim=True) / 16)
    qin = ec(torch.tensor([x[1] for x in b])) + ek(torch.tensor([x[2] for x in b]))
    q, k = Wq(qin)[:, None], Wk(h)
    if ROPE:
        q, k = rope(q, torch.tensor([580])), rope(k, torch.arange(577))
    logit = torch.einsum("bd,bpd->bp", q[:, 0], k) / d ** 0.5
    a = logit.softmax(-1)
    mass = torch.stack([a[j, [1 + p for p in x[3]] if x[3] else [0]].sum() for j, x in enumerate(b)])
    out = head(torch.cat([torch.einsum("bp,bpd->bd", a, Wv(h)), qin], -1))
    y = torch.tensor([int(x[4]) for x in b])
    return F.cross_entropy(out, y) + GROUND * -torch.log(mass.clamp(min=1e-6)).mean(), mass, (out.argmax(-1) == y).float()
t = time.time()
for step in range(int(os.environ.get('STEPS', 400))):
    idx = torch.randint(len(tr), (64,)).tolist()
    loss, m, _ = run(tr, tf, idx)
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 50 == 49:
        with torch.no_grad():
            _, vm, acc = run(va, vf, range(len(va)))
        print(step + 1, f"loss {loss.item():.3f} val mass {vm.mean():.3f} exist acc {acc.mean():.3f}", f"{time.time()-t:.0f}s", flush=True)

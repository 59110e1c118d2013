import torch, time, sys, json, math, numpy as np
import torch.nn.functional as F
from slimvlm.demo import scenes
from slimvlm.demo.model import build_demo_model, N_IMAGE_TOKENS
from slimvlm.demo.train import feature_stats, question_pool
torch.set_num_threads(2)
args = json.loads(sys.argv[1])
from cached import load
(tf, _), (vf, _) = load()
model, tok = build_demo_model(seed=0, **args.get("lm", {}))
model.set_attn_implementation("eager")
tp = [question_pool(scenes.make_scene(s), tok, 3) for s in scenes.split_seeds("train", tf.shape[0])]
vp = [question_pool(scenes.make_scene(s), tok, 1) for s in scenes.split_seeds("val", 40)]
ans_id = tok.convert_tokens_to_ids("answer:"); img_id = tok.convert_tokens_to_ids("<image>")
norm = feature_stats(tf)
GL = args.get("gl", 1)
def rows(ch):
    seqs = [[tok.bos_token_id] + q[:-1] + [img_id]*N_IMAGE_TOKENS + [ans_id] for _, q, _, _, _ in ch]
    L = max(map(len, seqs)); B = len(seqs)
    ids = torch.zeros(B, L, dtype=torch.long); mask = torch.zeros(B, L, dtype=torch.long); off = []
    for b, s in enumerate(seqs):
        ids[b, L-len(s):] = torch.tensor(s); mask[b, L-len(s):] = 1; off.append(L - len(s) + len(ch[b][1]))  # first image pos
    return ids, mask, off
def forward(ch, feats):
    ids, mask, off = rows(ch)
    inner = model.model
    emb = inner.get_input_embeddings()(ids)
    f = (feats[torch.tensor([c[0] for c in ch])].float() - norm[0]) / norm[1]
    proj = inner.multi_modal_projector(f)
    emb = emb.masked_scatter((ids == img_id)[..., None], proj.reshape(-1, proj.shape[-1]))
    cap = []
    h = inner.language_model.layers[GL].self_attn.register_forward_hook(lambda m, a, o: cap.append(o[1]))
    hid = inner.language_model(inputs_embeds=emb, attention_mask=mask, use_cache=False).last_hidden_state[:, -1]
    h.remove()
    w = cap[0][:, 0, -1]  # (B, L) head 0 at the last (answer:) position
    g = [-torch.log(w[b, [off[b] + p for p in c[4]]].sum().clamp(min=1e-6)) for b, c in enumerate(ch) if c[4]]
    return model.lm_head(hid), (torch.stack(g).mean() if g else hid.new_zeros(()))
params = [p for n, p in model.named_parameters() if not n.startswith("model.vision_tower.")]
opt = torch.optim.AdamW(params, lr=args["lr"], betas=(0.9, 0.98), weight_decay=0.01)
steps = args["steps"]; bs = args["bs"]; nw = max(1, int(0.03*steps))
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s+1)/nw if s < nw else 0.5*(1+math.cos(math.pi*(s-nw)/max(1,steps-nw))))
gen = torch.Generator().manual_seed(0)
allq = [(i, q, a, t, pt) for i, p in enumerate(tp) for q, a, t, pt in zip(p.tokens, p.answers, p.qtypes, p.patches)]
valq = [(i, q, a, t, pt) for i, p in enumerate(vp) for q, a, t, pt in zip(p.tokens, p.answers, p.qtypes, p.patches)]
def evaluate():
    model.eval(); hit = {}; gl = []
    with torch.no_grad():
        for s in range(0, len(valq), 32):
            ch = valq[s:s+32]
            lg, g = forward(ch, vf); gl.append(g.item())
            for c, p in zip(ch, lg.argmax(-1).tolist()):
                hit.setdefault(c[3], []).append(p == c[2])
    model.train()
    out = {k: round(float(np.mean(v)), 2) for k, v in sorted(hit.items())}; out["all"] = round(float(np.mean([x for v in hit.values() for x in v])), 3)
    return out, round(float(np.mean(gl)), 3)
order = []; ce_l = []; g_l = []; t0 = time.time(); model.train()
for step in range(steps):
    if len(order) < bs: order += torch.randperm(len(allq), generator=gen).tolist()
    idx, order = order[:bs], order[bs:]
    ch = [allq[i] for i in idx]
    lg, g = forward(ch, tf)
    ce = F.cross_entropy(lg, torch.tensor([c[2] for c in ch]))
    loss = ce + args["ground"] * g
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step(); sched.step()
    ce_l.append(ce.item()); g_l.append(g.item())
    if (step+1) % args["every"] == 0:
        el = time.time()-t0
        print(step+1, f"{el:.0f}s ce {np.mean(ce_l[-args['every']:]):.3f} ground {np.mean(g_l[-args['every']:]):.3f}", evaluate(), flush=True)

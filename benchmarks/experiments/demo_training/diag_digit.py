# where is digit information lost in the shipped LM? linear probes on: projector output (mean over the digit box,
# and the digit-centre patch), the anchor token's hidden state after each layer, for digit questions
import sys
import torch
from slimvlm.demo import scenes
import slimvlm.demo.train as T
from slimvlm.demo.model import load_demo_model
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
from cached import load
from digit_probe import patch_at, probe
(tf, _), (vf, _) = load()
model, tok = load_demo_model(sys.argv[1] if len(sys.argv) > 1 else "src/slimvlm/demo/weights")
inner = model.model
ids = T._ids(tok)
@torch.no_grad()
def data(feats, split, n):
    out = {k: [] for k in ("proj_mean", "proj_centre", "h0", "h1", "h2", "h3", "h4")}; y = []
    for i, s in enumerate(scenes.split_seeds(split, n)):
        sc = scenes.make_scene(s)
        p = T.question_pool(sc, tok, 1)
        qs = [j for j, q in enumerate(p.qtypes) if q == "digit"]
        if not qs: continue
        proj = inner.multi_modal_projector(feats[i:i + 1].float())[0]
        for j in qs[:1]:
            qa = [qa for qa in scenes.questions(sc) if qa.qtype == "digit"][0]
            o = sc.objects[qa.objects[0]]
            x0, y0, x1, y1 = o.digit_bbox; cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            out["proj_mean"].append(proj[T.box_patches(o.digit_bbox)].mean(0))
            out["proj_centre"].append(proj[patch_at(cx, cy)])
            b = T.pack_batch([[(p.tokens[j], p.answers[j], p.anchors[j])]], **ids)
            emb = inner.get_input_embeddings()(b["input_ids"])
            emb = torch.cat([emb[:, :1], proj[None], emb[:, 577:]], 1)
            hs = inner.language_model(inputs_embeds=emb, position_ids=b["position_ids"], output_hidden_states=True).hidden_states
            a = b["ground"][0][1]
            for l in range(5): out[f"h{l}"].append(hs[l][0, a])
            y.append(o.digit)
    return {k: torch.stack(v) for k, v in out.items()}, torch.tensor(y)
Xt, yt = data(tf, "train", int(sys.argv[3]) if len(sys.argv) > 3 else 1500); Xv, yv = data(vf, "val", vf.shape[0])
print("train", len(yt), "val", len(yv), flush=True)
for k in Xt: print(k, "val %.2f train %.2f" % probe(Xt[k], yt, Xv[k], yv), flush=True)

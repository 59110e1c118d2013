# A model trained with --pick: on the validation `larger` questions (4 question sets per cached val scene), does
# head 0 of layer L at answer: pick the larger object's phrase, is the answer right, and what are the wrong
# answers (the smaller object's kind/colour, the larger one's other attribute, or neither)? Usage: diag_larger.py MODEL [L]
import sys
import torch
from slimvlm.demo import scenes
from slimvlm.demo.model import load_demo_model
from slimvlm.demo.train import _ids, eager_in_layer, pack_batch, packed_logits, question_pool
from cached import load
torch.set_num_threads(1)
model, tok = load_demo_model(sys.argv[1])
layer = int(sys.argv[2]) if len(sys.argv) > 2 else 2
model.set_attn_implementation(eager_in_layer(0, layer))
_, (vf, _) = load()
seeds = scenes.split_seeds("val", vf.shape[0])
n = picked = right = small_attr = big_other = neither = 0
mass = 0.0
for start in range(0, len(seeds), 8):
    rows = list(range(start, min(start + 8, len(seeds))))
    items, meta = [], []
    for i in rows:
        sc = scenes.make_scene(seeds[i])
        pool = question_pool(sc, tok, 4)
        js = [j for j, q in enumerate(pool.qtypes) if q == "larger"]
        items.append([(pool.tokens[j], pool.answers[j], pool.anchors[j], pool.picks[j]) for j in js])
        for j in js:
            words = tok.convert_ids_to_tokens(pool.tokens[j][:-1])
            big = words[pool.picks[j]]
            small = next(w for w in words if " " in w and w != big)
            meta.append((big, small, tok.convert_ids_to_tokens(pool.answers[j])))
    if not meta:
        continue
    batch = pack_batch(items, **_ids(tok))
    seen = {}
    hook = model.model.language_model.layers[layer].self_attn.register_forward_hook(lambda m, a, o: seen.__setitem__(0, o[1]))
    with torch.no_grad():
        logits, _ = packed_logits(model, vf[rows], batch)[:2]
    hook.remove()
    head = seen[0][:, 0]
    at = (batch["targets"] != -100).nonzero().tolist()[0::2]  # answer positions (then </s>), in order
    preds = tok.convert_ids_to_tokens(logits[0::2].argmax(-1).tolist())
    ids = batch["input_ids"]
    for (r, q, (k,)), (big, small, answer) in zip(batch["pick"], meta):
        pred = preds[at.index([r, q])]
        k_small = max(p for p in range(q) if tok.convert_ids_to_tokens(int(ids[r, p])) == small)
        n += 1
        mass += head[r, q, k].item()
        picked += head[r, q, k].item() > head[r, q, k_small].item()
        right += pred == answer
        if pred != answer:
            if pred in small.split():
                small_attr += 1
            elif pred in big.split():
                big_other += 1
            else:
                neither += 1
print(f"{n} larger questions: head {layer}.0 picks the larger phrase {picked / n:.3f} (mean mass {mass / n:.3f}); "
      f"answers right {right / n:.3f}; wrong: smaller's attribute {small_attr}, larger's other attribute {big_other}, "
      f"neither {neither}")

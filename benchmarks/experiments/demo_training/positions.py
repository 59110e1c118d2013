# Is a demo LM position-bound? Spatial 144 / 64 by hand, text at contiguous vs original (576-image) positions.
# usage: positions.py [MODEL_DIR] (default: the shipped weights)
import sys
import torch
from slimvlm.demo import scenes
from slimvlm.demo.app import load_shipped
from slimvlm.demo.model import load_demo_model, make_inputs
torch.set_num_threads(2)
model, tok = load_demo_model(sys.argv[1]) if len(sys.argv) > 1 else load_shipped()
img_id = model.config.image_token_index
emb = model.get_input_embeddings()
stats = {}
with torch.no_grad():
  for seed in list(scenes.split_seeds("test", 8)):
    sc = scenes.make_scene(seed)
    for qa in scenes.questions(sc):
        x = make_inputs(model, tok, [sc], [qa.question])
        ids = x["input_ids"][0]
        feats = model.model.get_image_features(pixel_values=x["pixel_values"], vision_feature_layer=-2, vision_feature_select_strategy="default")
        feats = (feats.pooler_output if hasattr(feats, "pooler_output") else feats)
        feats = feats[0] if isinstance(feats, (list, tuple)) else feats
        feats = feats.reshape(-1, feats.shape[-1])
        img = (ids == img_id).nonzero()[:, 0]; s0 = int(img[0]); s1 = int(img[-1]) + 1
        for name, step in (("576", 1), ("144", 2), ("64", 3)):
            g = torch.arange(0, 24, step)
            keep = (g[:, None] * 24 + g[None, :]).reshape(-1)
            e = torch.cat([emb(ids[:s0]), feats[keep], emb(ids[s1:])], 0)[None]
            contiguous = torch.arange(e.shape[1])[None]
            original = torch.cat([torch.arange(s0), s0 + keep, torch.arange(s1, len(ids))])[None]
            for pname, pos in (("contig", contiguous), ("orig", original)):
                out = model.model.language_model(inputs_embeds=e, position_ids=pos)
                logit = model.lm_head(out.last_hidden_state[:, -1])
                p = tok.convert_ids_to_tokens(logit.argmax(-1).tolist())[0]
                stats.setdefault((name, pname), []).append(p == qa.answer)
for k, v in sorted(stats.items()):
    print(k, round(sum(v) / len(v), 3), len(v))

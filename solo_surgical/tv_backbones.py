"""Any torchvision classification model as a backbone: classifier removed, torchvision key names kept.

The classifier of every torchvision classification model is its last ``nn.Linear`` (ResNet /
RegNet / ShuffleNet ``fc``, ViT ``heads.head``, Swin ``head``, ConvNeXt / EfficientNet /
MobileNet / VGG / DenseNet / MaxViT ``classifier[.i]``); it is replaced by ``Identity``, so
the backbone returns what the classifier read (for ConvNeXt after its LayerNorm, for MaxViT
after its Tanh pre-logits). The replaced layer's key names are recorded on the module
(:func:`public_head_keys`): the strict loader drops exactly those two keys of a published
file and nothing else.

A torchvision ViT only accepts its native resolution; its backbone resizes other inputs to it
(bilinear, antialiased when shrinking) in a forward pre-hook, so a public ViT teacher sees its
inputs at the size it was trained on whatever size the surgical frames have.
"""
from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Any, Mapping, Optional

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.vision_transformer import VisionTransformer

VIT_SPEC_PREFIX = "vit:"
_VIT_FIELDS = ("image", "patch", "layers", "heads", "hidden", "mlp")
_HEAD_KEYS_ATTR = "_public_head_keys"

# torchvision models whose classifier is not one final Linear on the features
UNSUPPORTED = {
    "googlenet": "auxiliary classifiers change its outputs in train mode",
    "inception_v3": "auxiliary classifiers change its outputs in train mode",
    "squeezenet1_0": "its classifier is a convolution",
    "squeezenet1_1": "its classifier is a convolution",
}

# torchvision's named ViTs: (image, patch, layers, heads, hidden, mlp)
TORCHVISION_VITS = {
    "vit_b_16": (224, 16, 12, 12, 768, 3072),
    "vit_b_32": (224, 32, 12, 12, 768, 3072),
    "vit_l_16": (224, 16, 24, 16, 1024, 4096),
    "vit_l_32": (224, 32, 24, 16, 1024, 4096),
    "vit_h_14": (224, 14, 32, 16, 1280, 5120),
}


@lru_cache(maxsize=1)
def torchvision_backbone_names() -> tuple[str, ...]:
    """torchvision's classification models that can serve as backbones (not the :data:`UNSUPPORTED` ones)."""
    names = torchvision.models.list_models(module=torchvision.models)
    return tuple(n for n in names if n not in UNSUPPORTED)


def public_head_keys(model: nn.Module) -> tuple[str, ...]:
    """Keys of the classifier removed from ``model`` (e.g. ``("heads.head.weight", "heads.head.bias")``)."""
    return tuple(getattr(model, _HEAD_KEYS_ATTR, ()))


def strip_classifier(model: nn.Module, name: str) -> tuple[nn.Module, int]:
    """Replace the last ``nn.Linear`` of ``model`` by ``Identity``; return ``(model, its in_features)``."""
    last: Optional[tuple[str, nn.Linear]] = None
    for qualname, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (qualname, module)
    if last is None:
        raise KeyError(f"backbone {name!r}: no Linear classifier to remove")
    qualname, linear = last
    model.set_submodule(qualname, nn.Identity())
    keys = (f"{qualname}.weight",) + ((f"{qualname}.bias",) if linear.bias is not None else ())
    object.__setattr__(model, _HEAD_KEYS_ATTR, keys)  # a plain attribute, never in the state dict
    if isinstance(model, VisionTransformer):
        model.register_forward_pre_hook(_resize_to_native)
    return model, linear.in_features


def torchvision_backbone(name: str) -> tuple[nn.Module, int]:
    """torchvision model ``name`` (random init) without its classifier; (B, 3, H, W) -> (B, F)."""
    if name in UNSUPPORTED:
        raise KeyError(f"backbone {name!r} is not supported: {UNSUPPORTED[name]}")
    return strip_classifier(torchvision.models.get_model(name, weights=None), name)


def _resize_to_native(module: VisionTransformer, args: tuple[Any, ...]) -> tuple[Any, ...]:
    x: Tensor = args[0]
    size = module.image_size
    if tuple(x.shape[-2:]) == (size, size):
        return args
    shrink = min(x.shape[-2:]) > size
    return (F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink), *args[1:])


def vit_spec(image: int, patch: int, layers: int, heads: int, hidden: int, mlp: int) -> str:
    """The backbone name of a torchvision VisionTransformer of this shape."""
    values = dict(image=image, patch=patch, layers=layers, heads=heads, hidden=hidden, mlp=mlp)
    return VIT_SPEC_PREFIX + ",".join(f"{k}={values[k]}" for k in _VIT_FIELDS)


def parse_vit_spec(name: str) -> dict[str, int]:
    """``"vit:image=32,patch=8,layers=2,heads=2,hidden=32,mlp=64"`` -> its six integers (all required)."""
    body = name[len(VIT_SPEC_PREFIX):]
    values: dict[str, int] = {}
    for part in filter(None, body.split(",")):
        match = re.fullmatch(r"(\w+)=(\d+)", part.strip())
        if match is None or match.group(1) not in _VIT_FIELDS:
            raise KeyError(f"backbone {name!r}: {part!r} is not one of {', '.join(f + '=N' for f in _VIT_FIELDS)}")
        values[match.group(1)] = int(match.group(2))
    missing = [f for f in _VIT_FIELDS if f not in values]
    if missing:
        raise KeyError(f"backbone {name!r}: missing {', '.join(missing)}")
    if values["image"] % values["patch"] or values["hidden"] % values["heads"]:
        raise KeyError(f"backbone {name!r}: image must be a multiple of patch and hidden of heads")
    return values


def torchvision_vit(image: int, patch: int, layers: int, heads: int, hidden: int, mlp: int) -> tuple[nn.Module, int]:
    """A torchvision VisionTransformer of this shape without its head: (B, 3, H, W) -> (B, hidden) class token."""
    model = VisionTransformer(image_size=image, patch_size=patch, num_layers=layers, num_heads=heads,
                              hidden_dim=hidden, mlp_dim=mlp)
    return strip_classifier(model, vit_spec(image, patch, layers, heads, hidden, mlp))


def infer_vit_arch(state: Mapping[str, Tensor]) -> Optional[str]:
    """Backbone name of a torchvision-layout ViT state dict, or None if it is not one or is ambiguous.

    Image size, patch size, depth, width and MLP width are read from the shapes; the number of
    heads is not visible in any shape, so only a match with one of torchvision's named ViTs or the
    DINOv2 family (at any image size) gives an answer: e.g. ``vit_b_16`` at 224 px, else its ``vit:`` spec.
    """
    if "conv_proj.weight" not in state or "encoder.pos_embedding" not in state:
        return None
    hidden, _, patch, _ = state["conv_proj.weight"].shape
    tokens = state["encoder.pos_embedding"].shape[1] - 1
    side = math.isqrt(tokens)
    if side * side != tokens:
        return None
    layers = len({m.group(1) for k in state if (m := re.match(r"encoder\.layers\.encoder_layer_(\d+)\.", k))})
    mlp_key = next((k for k in state if re.fullmatch(r"encoder\.layers\.encoder_layer_0\.mlp\.(0|linear_1)\.weight", k)), None)
    if mlp_key is None:
        return None
    image, mlp = side * patch, state[mlp_key].shape[0]
    for name, (tv_image, tv_patch, tv_layers, tv_heads, tv_hidden, tv_mlp) in {**TORCHVISION_VITS, **DINOV2_VITS}.items():
        if (tv_patch, tv_layers, tv_hidden, tv_mlp) == (patch, layers, hidden, mlp):
            return name if image == tv_image else vit_spec(image, patch, layers, tv_heads, hidden, mlp)
    return None


# --- torch.hub DINOv2 (facebookresearch/dinov2) -> torchvision VisionTransformer ------------------
# The DINOv2 ViT-S/B/L files are plain state dicts: cls_token, pos_embed (518 px, patches of 14),
# mask_token (masked-image training only), patch_embed.proj, blocks.{i}.{norm1, attn.qkv, attn.proj,
# ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}, norm. Apart from LayerScale, a block is torchvision's
# encoder layer (pre-norm, LayerNorm eps 1e-6, qkv rows ordered q, k, v, exact GELU), and the output
# (the normalised class token) is what torchvision's ViT returns without its head. LayerScale
# multiplies a branch's output by gamma, so it folds exactly into the branch's last Linear:
# gamma * (W x + b) = (diag(gamma) W) x + gamma * b. All DINOv2 models use 64-d heads.
DINOV2_LAYOUT = "dinov2-hub"
DINOV2_HEAD_DIM = 64
DINOV2_VITS = {  # name -> (image, patch, layers, heads, hidden, mlp)
    "dinov2_vits14": (518, 14, 12, 6, 384, 1536),
    "dinov2_vitb14": (518, 14, 12, 12, 768, 3072),
    "dinov2_vitl14": (518, 14, 24, 16, 1024, 4096),
}


def is_dinov2_hub_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "patch_embed.proj.weight" in obj and "cls_token" in obj and "pos_embed" in obj


def dinov2_hub_to_torchvision(state: Mapping[str, Tensor], where: str = "<memory>") -> tuple[dict[str, Tensor], str]:
    """Convert a torch.hub DINOv2 state dict; return ``(torchvision ViT state dict, backbone name)``.

    Every source key is used except ``mask_token``; any other key (registers, SwiGLU FFN of ViT-g,
    chunked blocks, a head) raises ``ValueError`` naming it, so nothing is silently lost.
    """
    hidden = state["cls_token"].shape[-1]
    patch = state["patch_embed.proj.weight"].shape[-1]
    tokens = state["pos_embed"].shape[1] - 1
    side = math.isqrt(tokens)
    layers = len({m.group(1) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if side * side != tokens or layers == 0 or "blocks.0.mlp.fc1.weight" not in state:
        raise ValueError(f"{where}: not a DINOv2 ViT-S/B/L layout (registers, SwiGLU or chunked blocks?)")
    mlp = state["blocks.0.mlp.fc1.weight"].shape[0]
    out: dict[str, Tensor] = {
        "class_token": state["cls_token"], "conv_proj.weight": state["patch_embed.proj.weight"],
        "conv_proj.bias": state["patch_embed.proj.bias"], "encoder.pos_embedding": state["pos_embed"],
        "encoder.ln.weight": state["norm.weight"], "encoder.ln.bias": state["norm.bias"]}
    used = {"cls_token", "patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed", "norm.weight", "norm.bias",
            "mask_token"}
    for i in range(layers):
        src, dst = f"blocks.{i}.", f"encoder.layers.encoder_layer_{i}."
        g1, g2 = state[src + "ls1.gamma"], state[src + "ls2.gamma"]
        pairs = {"ln_1.weight": state[src + "norm1.weight"], "ln_1.bias": state[src + "norm1.bias"],
                 "self_attention.in_proj_weight": state[src + "attn.qkv.weight"],
                 "self_attention.in_proj_bias": state[src + "attn.qkv.bias"],
                 "self_attention.out_proj.weight": g1[:, None] * state[src + "attn.proj.weight"],
                 "self_attention.out_proj.bias": g1 * state[src + "attn.proj.bias"],
                 "ln_2.weight": state[src + "norm2.weight"], "ln_2.bias": state[src + "norm2.bias"],
                 "mlp.0.weight": state[src + "mlp.fc1.weight"], "mlp.0.bias": state[src + "mlp.fc1.bias"],
                 "mlp.3.weight": g2[:, None] * state[src + "mlp.fc2.weight"], "mlp.3.bias": g2 * state[src + "mlp.fc2.bias"]}
        out.update({dst + k: v for k, v in pairs.items()})
        used |= {src + k for k in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                                   "attn.proj.bias", "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight",
                                   "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "ls2.gamma")}
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"{where}: DINOv2 keys without a torchvision counterpart: {', '.join(unused[:5])}"
                         + (f" (+{len(unused) - 5} more)" if len(unused) > 5 else ""))
    shape = (side * patch, patch, layers, max(1, hidden // DINOV2_HEAD_DIM), hidden, mlp)
    name = next((n for n, s in DINOV2_VITS.items() if s == shape), None) or vit_spec(*shape)
    return out, name

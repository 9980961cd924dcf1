"""solo-surgical: distil public pretrained models into self-supervised learning on surgical video.

The public API is small: the distillation core (:mod:`solo_surgical.distill`), the method
registry (:func:`method_names`, :func:`resolve_method`) and the backbone registry.
Hosts (lightly + Lightning, solo-learn) live in :mod:`solo_surgical.hosts` and are only
imported when used.
"""
from .backbones import build_backbone, backbone_names
from .methods import method_names, resolve_method

__version__ = "0.1.0"
__all__ = ["backbone_names", "build_backbone", "method_names", "resolve_method", "__version__"]

"""``solo_surgical.solo.register()``: make ``distill_*`` / ``teacher_*`` known to solo-learn in your own scripts.

solo-learn's ``main_pretrain.py`` needs nothing: the Hydra plugin registers them. Call this
before looking a method up in ``solo.methods.METHODS`` anywhere else.
"""
from .hosts.solo import CONFIG_SEARCH_PATH, available, register

__all__ = ["CONFIG_SEARCH_PATH", "available", "register"]

"""Host-agnostic distillation core (pure torch; imports neither lightly nor solo-learn)."""
from .freeze import BN_MODES, freeze
from .head import WEIGHT_PRESETS, DistillationHead, DistillConfig, check_global_batch
from .loss import gather_keys, relation_logits, relational_kl, symmetric_relational_kl
from .memory import AlignedMemory, gather_across_ranks
from .mlp import build_mlp, describe_mlp
from .teacher import FrozenTeacher, load_teacher, save_teacher_checkpoint

__all__ = [
    "AlignedMemory", "BN_MODES", "DistillConfig", "DistillationHead", "FrozenTeacher", "WEIGHT_PRESETS",
    "build_mlp", "check_global_batch", "describe_mlp", "freeze", "gather_across_ranks", "gather_keys", "load_teacher",
    "relation_logits", "relational_kl", "save_teacher_checkpoint", "symmetric_relational_kl",
]

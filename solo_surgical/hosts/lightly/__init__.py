"""The lightly + Lightning host: SSL methods built from lightly's pieces, trained by Lightning."""
from .base import OptimConfig, SSLMethod, SSLOutput
from .methods import BYOL, SimCLR, MoCoV2Plus

__all__ = ["BYOL", "MoCoV2Plus", "OptimConfig", "SSLMethod", "SSLOutput", "SimCLR"]

"""The lightly + Lightning host: SSL methods built from lightly's pieces, trained by Lightning."""
from .base import OptimConfig, SSLMethod, SSLOutput
from .dino import DINO
from .methods import BYOL, SimCLR, MoCoV2Plus
from .nnclr import NNCLR
from .siamese import BarlowTwins, SimSiam, VICReg
from .swav import SwAV

__all__ = ["BYOL", "BarlowTwins", "DINO", "MoCoV2Plus", "NNCLR", "OptimConfig", "SSLMethod", "SSLOutput", "SimCLR",
           "SimSiam", "SwAV", "VICReg"]

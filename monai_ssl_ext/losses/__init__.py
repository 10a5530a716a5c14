"""Self-supervised losses, one module per loss."""

from .ntxent import NTXentLoss
from .byol import BYOLLoss
from .mae import MAELoss
from .barlow_twins import BarlowTwinsCrossCorrelationLoss
from .mocov3 import MoCoV3Loss
from .recon_contrastive import ReconContrastiveLoss, ReconL1Loss
from .jaccard import MaskedJaccardLoss
from .depth import ScaleShiftInvariantLoss
from .swav import SwAVLoss, sinkhorn
from .deepcluster import DeepClusterV2Loss

"""Self-supervised losses, one module per loss."""

from .ntxent import NTXentLoss
from .byol import BYOLLoss
from .recon_contrastive import ReconContrastiveLoss, ReconL1Loss
from .jaccard import MaskedJaccardLoss

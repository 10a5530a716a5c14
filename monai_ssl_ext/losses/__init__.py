"""Self-supervised losses, one module per loss."""

from .ntxent import NTXentLoss
from .byol import BYOLLoss

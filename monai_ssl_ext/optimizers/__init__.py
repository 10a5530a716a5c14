"""Optimizers for self-supervised pretraining."""

from .lars import LARS, weight_and_bias_groups
from .schedules import WarmupCosineLR

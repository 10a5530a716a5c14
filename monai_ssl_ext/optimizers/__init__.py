"""Optimizers for self-supervised pretraining."""

from .lars import LARS

"""The SSL trainer: a MONAI ``SupervisedTrainer`` whose iteration feeds the views to the SSL
wrapper and the wrapper's outputs to the loss; ``engine.state.output["loss"]`` is the scalar, so
MONAI's StatsHandler, MLflow and checkpoint handlers work unchanged."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import convert_to_tensor
from monai.utils.enums import CommonKeys as Keys

__all__ = ["SSLTrainer", "SSLEvaluator", "val_loss_metric", "lower_is_better", "batch_loss"]


def _views(engine, batchdata: dict) -> list[torch.Tensor]:
    """The views as plain tensors on the engine's device (MetaTensor dispatch makes every network
    op an order of magnitude slower, and SSL needs no metadata)."""
    missing = [k for k in engine.view_keys if k not in batchdata]
    if missing:
        raise KeyError(f"{type(engine).__name__}: batch has no view(s) {missing}; keys are {sorted(batchdata)}")
    return [
        convert_to_tensor(batchdata[k], track_meta=False).to(engine.state.device, non_blocking=engine.non_blocking)
        for k in engine.view_keys
    ]


class SSLTrainer(SupervisedTrainer):
    """Self-supervised trainer.

    Each iteration: ``views = [batch[k] for k in view_keys]``, ``outputs = network(*views)``,
    ``loss = loss_function(*outputs)`` (or ``loss_function(outputs)`` for a dict), backward, step.

    Args:
        view_keys: batch keys of the views (``MultiViewd`` names them ``image``, ``image_2``, …).
        All other arguments are those of ``monai.engines.SupervisedTrainer``. As there, the output is
        decollated into a list of per-sample dicts, each holding the batch loss, so MONAI's
        handlers (``from_engine(["loss"], first=True)``) read it unchanged.
    """

    def __init__(self, *args, view_keys: Sequence[str] = ("image", "image_2"), **kwargs):
        super().__init__(*args, **kwargs)
        self.view_keys = list(view_keys)

    def _iteration(self, engine: SSLTrainer, batchdata: dict) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        device = engine.state.device
        views = _views(engine, batchdata)
        engine.state.output = {}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        device_type = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
        with torch.autocast(device_type, enabled=bool(engine.amp), **engine.amp_kwargs):
            outputs = engine.network(*views)
            engine.state.output[Keys.PRED] = outputs
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss = engine.loss_function(outputs) if isinstance(outputs, dict) else engine.loss_function(*outputs)
            engine.state.output[Keys.LOSS] = loss
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.state.output[Keys.LOSS] = loss.detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class SSLEvaluator(SupervisedEvaluator):
    """Validation for SSL: the same views → network → loss as :class:`SSLTrainer`, without
    gradients and with the network in eval mode; ``engine.state.output["loss"]`` feeds the
    ``val_loss`` metric (see :func:`val_loss_metric`)."""

    def __init__(self, *args, view_keys: Sequence[str] = ("image", "image_2"), loss_function=None, **kwargs):
        super().__init__(*args, **kwargs)
        if loss_function is None:
            raise ValueError("SSLEvaluator needs `loss_function`")
        self.view_keys = list(view_keys)
        self.loss_function = loss_function

    def _iteration(self, engine: SSLEvaluator, batchdata: dict) -> dict:
        device = engine.state.device
        views = _views(engine, batchdata)
        engine.network.eval()
        with torch.no_grad():
            outputs = engine.network(*views)
            loss = engine.loss_function(outputs) if isinstance(outputs, dict) else engine.loss_function(*outputs)
        engine.state.output = {Keys.PRED: outputs, Keys.LOSS: loss.detach()}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


def val_loss_metric():
    """Ignite metric averaging ``output["loss"]`` over an evaluation run."""
    from ignite.metrics import Average

    return Average(output_transform=batch_loss)


def batch_loss(output) -> torch.Tensor:
    """The batch loss from an engine output, decollated (list of dicts) or not."""
    if isinstance(output, (list, tuple)):
        output = output[0]
    return output[Keys.LOSS] if isinstance(output, dict) else output


def lower_is_better(current: float, best: float) -> bool:
    """``metric_cmp_fn`` for losses (source A kept the *worst* checkpoint with mode="max")."""
    return current < best

"""The SSL engines: MONAI's ``SupervisedTrainer`` and ``SupervisedEvaluator`` themselves, fed views.

MONAI's own iteration runs unchanged — amp (autocast + ``GradScaler``), ``accumulation_steps``,
``optim_set_to_none``, ``compile``, ``IterationEvents``, decollation — with three SSL pieces:

* :class:`PrepareViews` (the ``prepare_batch``): the views as plain tensors on the engine's device,
  the first as MONAI's ``inputs``, the others as extra network arguments, so that the (default)
  inferer calls ``network(*views)``;
* :class:`SSLLoss` (wraps ``loss_function``): MONAI calls ``loss_function(pred, target)``; an SSL
  loss takes the wrapper's outputs, ``loss(*outputs)`` (or ``loss(outputs)`` for a dict);
* :class:`ViewsInferer`: ``network(*views)``, under ``torch.autocast`` of the input's device when
  amp is on and that device is not CUDA (MONAI's amp is ``torch.autocast("cuda")``, which does
  nothing on CPU; there amp means bfloat16 autocast, as ``torch.autocast("cpu")`` defaults to).

``engine.state.output["loss"]`` is the scalar loss (decollated into every item, as MONAI does), so
MONAI's StatsHandler, MLflow and checkpoint handlers read it with ``from_engine(["loss"], first=True)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents, PrepareBatch
from monai.inferers import Inferer
from monai.utils import convert_to_tensor
from monai.utils.enums import CommonKeys as Keys

from monai_ssl_ext.malloc import retain_freed_memory
from monai_ssl_ext.memory_format import network_to_channels_last, to_channels_last

__all__ = [
    "SSLTrainer",
    "SSLEvaluator",
    "PrepareViews",
    "SSLLoss",
    "ViewsInferer",
    "val_loss_metric",
    "lower_is_better",
    "batch_loss",
]


class PrepareViews(PrepareBatch):
    """``prepare_batch`` for SSL: ``(views[0], None, tuple(views[1:]), extras)``, the views being
    ``batch[k] for k in view_keys`` as plain tensors on ``device`` (MetaTensor dispatch makes every
    network op an order of magnitude slower, and SSL needs no metadata), ``extras`` the keyword
    arguments ``{k: batch[k] for k in extra_keys}`` (e.g. DeepCluster-v2's dataset ``index``), so the
    network is called as ``network(*views, **extras)``. With ``channels_last`` the views are stored channels-last
    (:func:`monai_ssl_ext.memory_format.to_channels_last`: 4-D and 5-D batches; the same values)."""

    def __init__(self, view_keys: Sequence[str], extra_keys: Sequence[str] = (), channels_last: bool = False):
        if isinstance(view_keys, str) or not view_keys:
            raise ValueError(f"view_keys must be a non-empty list of batch keys, got {view_keys!r}")
        if isinstance(extra_keys, str):
            raise ValueError(f"extra_keys must be a list of batch keys, got {extra_keys!r}")
        self.view_keys, self.extra_keys = list(view_keys), list(extra_keys)
        self.channels_last = bool(channels_last)

    def views(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs) -> list[torch.Tensor]:
        if not isinstance(batchdata, dict):
            raise TypeError(
                f"SSL engines need dict batches with the views {self.view_keys}, got {type(batchdata).__name__}"
            )
        missing = [k for k in self.view_keys if k not in batchdata]
        if missing:
            raise KeyError(f"batch has no view(s) {missing}; keys are {sorted(batchdata)}")
        views = [
            convert_to_tensor(batchdata[k], track_meta=False).to(device=device, non_blocking=non_blocking, **kwargs)
            for k in self.view_keys
        ]
        return [to_channels_last(v) for v in views] if self.channels_last else views

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs: Any):
        views = self.views(batchdata, device, non_blocking, **kwargs)
        missing = [k for k in self.extra_keys if k not in batchdata]
        if missing:
            raise KeyError(f"batch has no {missing} (extra_keys); keys are {sorted(batchdata)}")
        extras = {k: convert_to_tensor(batchdata[k], track_meta=False).to(device=device, non_blocking=non_blocking)
                  for k in self.extra_keys}
        return views[0], None, tuple(views[1:]), extras


class SSLLoss:
    """Adapts an SSL loss to MONAI's ``loss_function(pred, target)``: ``loss(*pred)`` for the tuple
    of wrapper outputs, ``loss(pred)`` for a dict or a single tensor; ``target`` (None) is ignored."""

    def __init__(self, loss: Callable):
        self.loss = loss

    def __call__(self, pred, target=None) -> torch.Tensor:
        if isinstance(pred, (tuple, list)):
            return self.loss(*pred)
        return self.loss(pred)

    def __repr__(self) -> str:
        return f"SSLLoss({self.loss!r})"


class ViewsInferer(Inferer):
    """``network(inputs, *args, **kwargs)``; with ``amp`` on a non-CUDA device, under that device's
    ``torch.autocast`` (``amp_kwargs``, e.g. ``{"dtype": torch.bfloat16}``), its floating outputs then returned in
    float32: the loss runs outside this autocast and would otherwise compute in the low precision (SimCLR's loss
    from bfloat16 outputs was 4.00000 where float32 gives 4.02870; on CUDA the loss runs under MONAI's autocast,
    whose float32 ops include the softmax, log and sums). On CUDA MONAI's engines already run the forward under
    ``torch.autocast("cuda", **amp_kwargs)``."""

    def __init__(self, amp: bool = False, amp_kwargs: dict | None = None):
        super().__init__()
        self.amp = bool(amp)
        self.amp_kwargs = dict(amp_kwargs or {})

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any):
        device_type = inputs.device.type if isinstance(inputs, torch.Tensor) else "cpu"
        if self.amp and device_type != "cuda":
            with torch.autocast(device_type, **self.amp_kwargs):
                outputs = network(inputs, *args, **kwargs)
            return _float32(outputs)
        return network(inputs, *args, **kwargs)


def _float32(outputs):
    """``outputs`` (a tensor, or tuples / lists / dicts of them) with floating tensors in float32."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return type(outputs)((k, _float32(v)) for k, v in outputs.items())
    if isinstance(outputs, (list, tuple)) and not hasattr(outputs, "_fields"):
        return type(outputs)(_float32(v) for v in outputs)
    return outputs


def _ssl_loss(loss_function: Callable) -> SSLLoss:
    if loss_function is None:
        raise ValueError("SSL engines need `loss_function`")
    return loss_function if isinstance(loss_function, SSLLoss) else SSLLoss(loss_function)


class SSLTrainer(SupervisedTrainer):
    """Self-supervised trainer: ``monai.engines.SupervisedTrainer`` whose iteration feeds
    ``network(*views)`` and ``loss_function(*outputs)``.

    Args:
        view_keys: batch keys of the views (``MultiViewd`` names them ``image``, ``image_2``, …).
        extra_keys: batch keys passed to the network as keyword arguments (e.g. ``["index"]``).
        All other arguments are those of ``SupervisedTrainer`` and behave as there, e.g.
        ``accumulation_steps`` (the loss is divided by it for the backward pass, the optimizer steps
        every ``accumulation_steps`` iterations and at the end of each epoch;
        ``engine.state.output["loss"]`` stays the unscaled batch loss), ``amp`` (on CUDA: autocast
        and ``GradScaler``; on CPU: bfloat16 autocast, see :class:`ViewsInferer`), ``amp_kwargs``,
        ``compile``. ``optim_set_to_none`` (default True here, False in MONAI): gradients are released before each
        step's backward, as torch's ``Optimizer.zero_grad()`` and the plain and lightly loops of ``bench`` do,
        instead of filled with zeros and accumulated into (the same gradients, without a zero fill and an extra add
        per parameter and step: 3% of a DeepCluster-v2 CPU-demo run); a parameter without a gradient in a step is then
        left alone by the optimizer (no weight decay or momentum move). ``retain_freed_memory`` (default True): before
        the run, glibc is told to keep freed memory for reuse (:mod:`monai_ssl_ext.malloc`). ``channels_last``
        (default False): the network's 4-D / 5-D weights and the views are stored channels-last
        (:mod:`monai_ssl_ext.memory_format`; the same values; faster convolutions for some networks and sizes, as
        measured per bundle in the README), the network converted in place here. ``prepare_batch``
        defaults to :class:`PrepareViews`, the ``inferer`` to :class:`ViewsInferer`. ``engine.loss_function`` is the
        :class:`SSLLoss` wrapper; the given loss is ``engine.loss_function.loss``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        *args,
        view_keys: Sequence[str] = ("image", "image_2"),
        extra_keys: Sequence[str] = (),
        prepare_batch: Callable | None = None,
        inferer: Inferer | None = None,
        retain_freed_memory: bool = True,
        optim_set_to_none: bool = True,
        channels_last: bool = False,
        **kwargs,
    ):
        self.view_keys = list(view_keys)
        self.retain_freed_memory = bool(retain_freed_memory)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            network_to_channels_last(network)
        super().__init__(
            device,
            max_epochs,
            train_data_loader,
            network,
            optimizer,
            _ssl_loss(loss_function),
            *args,
            prepare_batch=(PrepareViews(self.view_keys, extra_keys, self.channels_last) if prepare_batch is None
                           else prepare_batch),
            inferer=inferer,
            optim_set_to_none=optim_set_to_none,
            **kwargs,
        )
        if inferer is None:
            self.inferer = ViewsInferer(self.amp, self.amp_kwargs)
        self.add_event_handler(IterationEvents.MODEL_COMPLETED, _detach_loss)

    def run(self) -> None:
        """MONAI's ``run``; with ``retain_freed_memory`` (the default), glibc first keeps freed memory for reuse
        (:func:`monai_ssl_ext.malloc.retain_freed_memory`: no fresh page faults for each step's activations)."""
        if self.retain_freed_memory:
            retain_freed_memory()
        super().run()


def _detach_loss(engine) -> None:
    """Without decollation MONAI leaves the loss attached to the spent graph; handlers want a value."""
    output = engine.state.output
    if isinstance(output, dict) and isinstance(output.get(Keys.LOSS), torch.Tensor):
        output[Keys.LOSS] = output[Keys.LOSS].detach()


class SSLEvaluator(SupervisedEvaluator):
    """Validation for SSL: ``monai.engines.SupervisedEvaluator`` (eval mode, no gradients, amp as
    in :class:`SSLTrainer`) feeding ``network(*views)``; the loss of the outputs is computed when
    the forward completes (``IterationEvents.FORWARD_COMPLETED``, before any handler given here),
    so ``engine.state.output["loss"]`` feeds the ``val_loss`` metric (see :func:`val_loss_metric`).

    Args:
        view_keys: as for :class:`SSLTrainer`.
        loss_function: the SSL loss (required).
        All other arguments are those of ``SupervisedEvaluator``.
    """

    def __init__(
        self,
        device: str | torch.device,
        val_data_loader,
        network: torch.nn.Module,
        *args,
        view_keys: Sequence[str] = ("image", "image_2"),
        loss_function: Callable | None = None,
        prepare_batch: Callable | None = None,
        inferer: Inferer | None = None,
        val_handlers: Sequence | None = None,
        **kwargs,
    ):
        loss = _ssl_loss(loss_function)
        self.view_keys = list(view_keys)
        super().__init__(
            device,
            val_data_loader,
            network,
            *args,
            prepare_batch=PrepareViews(self.view_keys) if prepare_batch is None else prepare_batch,
            inferer=inferer,
            **kwargs,
        )
        if inferer is None:
            self.inferer = ViewsInferer(self.amp, self.amp_kwargs)
        self.loss_function = loss
        self.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._compute_loss)
        if val_handlers is not None:  # after the loss, so that handlers of the forward see it
            self._register_handlers(val_handlers)

    @staticmethod
    def _compute_loss(engine: SSLEvaluator) -> None:
        with torch.no_grad():
            loss = engine.loss_function(engine.state.output[Keys.PRED], engine.state.output.get(Keys.LABEL))
        engine.state.output[Keys.LOSS] = loss.detach().mean()
        engine.fire_event(IterationEvents.LOSS_COMPLETED)


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

"""Small ``torch.distributed`` helpers for self-supervised losses.

Contrastive and clustering objectives (SimCLR, MoCo, SwAV, ...) need the embeddings of *all* ranks, not only the
local batch. The helpers here all-gather along dim 0 in rank order, so that on every rank

    gather(x) = cat([x_rank0, x_rank1, ..., x_rank{W-1}], dim=0)

and every function falls back to the local tensor when ``torch.distributed`` is not initialised (or the world size
is 1), so the same code runs in a single process.

Only equal batch sizes per rank are supported (``all_gather`` needs equal shapes); a clear ``ValueError`` is raised
on every rank when the shapes differ (e.g. an uneven last batch: use ``drop_last=True``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = [
    "is_distributed", "get_world_size", "get_rank", "gather_with_grad", "gather_no_grad", "all_reduce_mean",
    "all_reduce_sum_with_grad",
]


def is_distributed() -> bool:
    """``True`` when ``torch.distributed`` is available and its default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes in the default group, 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    """Rank of this process in the default group, 0 when not distributed."""
    return dist.get_rank() if is_distributed() else 0


def _check_equal_shapes(x: torch.Tensor) -> None:
    """Raise the same ``ValueError`` on every rank if the ranks' tensors do not all have ``x.shape``."""
    shape = torch.tensor([x.dim(), *x.shape], dtype=torch.long, device=x.device)
    # fixed length (ndim + up to 8 sizes) so that tensors of different ndim can still be gathered
    padded = torch.full((9,), -1, dtype=torch.long, device=x.device)
    padded[: min(9, shape.numel())] = shape[:9]
    shapes = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, padded)
    if any(not torch.equal(s, shapes[0]) for s in shapes):
        got = [tuple(s[1 : 1 + int(s[0])].tolist()) for s in shapes]
        raise ValueError(
            f"all-gather needs the same tensor shape on every rank (equal batch sizes per rank), got per rank {got}; "
            "use drop_last=True or equal per-rank batch sizes."
        )


def _all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the gradient over ranks and returns this rank's slice.

    With every rank computing a loss ``L_r`` from the gathered tensor, the gradient reaching the local rows is
    ``sum_r dL_r / dx_local``; DDP's gradient averaging then yields ``d(mean_r L_r)/dtheta``, the gradient of the
    single-process loss on the concatenated batch.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rank, ctx.batch = dist.get_rank(), x.shape[0]
        return _all_gather_cat(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()  # all_reduce works in place
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.batch : (ctx.rank + 1) * ctx.batch]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` along dim 0 (rank order) keeping the autograd graph of the local part.

    Forward: ``cat([x_0, ..., x_{W-1}])``; backward: all-reduce (SUM) of the incoming gradient, sliced to this rank's
    rows. Requires the same shape on every rank (``ValueError`` otherwise). Returns ``x`` unchanged when not
    distributed or when the world size is 1.
    """
    if get_world_size() == 1:
        return x
    _check_equal_shapes(x)
    return _GatherWithGrad.apply(x)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` along dim 0 (rank order) without gradients, e.g. for MoCo keys, Sinkhorn codes or k-means.

    Requires the same shape on every rank (``ValueError`` otherwise). Returns ``x.detach()`` when not distributed.
    """
    if get_world_size() == 1:
        return x.detach()
    _check_equal_shapes(x)
    with torch.no_grad():
        return _all_gather_cat(x.detach())


def all_reduce_mean(x: torch.Tensor | float) -> torch.Tensor:
    """Mean of ``x`` over ranks, without gradients (for logging). Returns a detached copy when not distributed."""
    x = torch.as_tensor(x).detach()
    y = x.clone() if x.is_floating_point() else x.double()
    if get_world_size() == 1:
        return y
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / get_world_size()


class _AllReduceSumWithGrad(torch.autograd.Function):
    """All-reduce (SUM) whose backward is again an all-reduce (SUM) of the incoming gradient.

    Every rank holds ``y = sum_r x_r``; with rank ``r`` computing a loss ``L_r(y)``, the gradient of the total
    ``sum_r L_r`` with respect to ``x_s`` is ``sum_r dL_r/dy``, which the backward all-reduce delivers on every rank
    (the same convention as :func:`gather_with_grad`: local gradients are those of the sum of the per-rank losses,
    DDP's averaging turns them into the gradient of their mean).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = x.clone(memory_format=torch.contiguous_format)  # all_reduce works in place: leave x intact
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks, differentiable: forward ``sum_r x_r`` on every rank, backward the all-reduce (SUM) of
    the incoming gradient, so ``x_s`` receives ``sum_r dL_r/dy``.

    When every rank computes the *same* loss ``L`` from the reduced tensor, each rank's local gradient is therefore
    ``W * dL/dx_local`` and DDP's averaging over the ``W`` ranks gives exactly ``dL/dtheta`` (the gradient of the
    single-process loss). The plain in-place ``torch.distributed.all_reduce`` records no backward, which leaves
    ``dL/dx_local`` and, after DDP's averaging, ``1/W`` of the gradient (facebookresearch/barlowtwins#8,
    lightly#1977). ``torch.distributed.nn.functional.all_reduce`` with ``ReduceOp.SUM`` computes the same thing in
    torch 2.x; this function keeps the contract in one tested place and needs no op argument.

    Requires the same shape on every rank (``ValueError`` otherwise). Returns ``x`` unchanged when not distributed
    or when the world size is 1.
    """
    if get_world_size() == 1:
        return x
    _check_equal_shapes(x)
    return _AllReduceSumWithGrad.apply(x)

"""Channels-last against PyTorch's default layout for one SSL training step, where the bundle bench does not reach:
the ``train_3d.json`` recipes (MONAI's 3D ResNets at GPU-sized settings) or another trunk size. A step is the
forward pass of two views of a batch, SimCLR's NT-Xent loss (:class:`monai_ssl_ext.losses.NTXentLoss`), backward and
an SGD step, with the weights and views stored as ``SSLTrainer(channels_last=True)`` stores them
(:mod:`monai_ssl_ext.memory_format`). Each round times both layouts, each in a fresh process, in alternating order;
the report is the median per-round ratio channels-last / default step seconds, with its interval
(:func:`bench.run.median_interval`)::

    python -m bench.layout --arch resnet50 --spatial_dims 3 --size 32 --batch 4 --rounds 5

On a GPU (found by torch) the step runs there, timed between CUDA synchronisations.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from .run import fresh_process, median_interval

LAYOUTS = ("default", "channels_last")


def step_seconds(arch: str, spatial_dims: int, size: int, batch: int, layout: str, steps: int = 6,
                 warmup: int = 2, threads: int | None = None) -> dict:
    """The median seconds of ``steps - warmup`` timed SSL steps (two views of ``batch`` random single-channel images
    of side ``size``) of MONAI's ``arch`` (``resnet10``, ``resnet18``, ``resnet50``, ...) in ``layout``, and the
    first and the last step's loss, and the layout the kernels were in after the steps."""
    import torch
    from monai.networks import nets

    from monai_ssl_ext.losses import NTXentLoss
    from monai_ssl_ext.memory_format import network_to_channels_last, to_channels_last

    from .loops import trained_channels_last

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if threads:
        torch.set_num_threads(int(threads))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    network = getattr(nets, arch)(spatial_dims=spatial_dims, n_input_channels=1, num_classes=128).to(device)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
    loss_function = NTXentLoss(temperature=0.1, gather_distributed=False)
    views = [torch.rand(batch, 1, *[size] * spatial_dims, device=device) for _ in range(2)]
    if layout == "channels_last":
        network_to_channels_last(network)
        views = [to_channels_last(v) for v in views]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times, losses = [], []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_function(network(views[0]), network(views[1]))
        loss.backward()
        optimizer.step()
        sync()
        times.append(time.perf_counter() - start)
        losses.append(float(loss))
    return {"step_s": statistics.median(times[warmup:]), "loss_first": losses[0], "loss_last": losses[-1],
            "device": str(device), "channels_last": trained_channels_last(network)}


def compare(arch: str = "resnet50", spatial_dims: int = 3, size: int = 32, batch: int = 4, rounds: int = 5,
            steps: int = 6, threads: int | None = 2) -> dict:
    """``rounds`` interleaved rounds of both layouts; the per-round ratios channels-last / default step seconds, their
    median and interval, and each layout's step seconds."""
    if steps < 3:
        raise ValueError(f"steps must be at least 3 (2 warm-up steps are not timed), got {steps}")
    setting = {"arch": arch, "spatial_dims": spatial_dims, "size": size, "batch": batch, "steps": steps,
               "threads": threads}
    runs: dict[str, list[dict]] = {layout: [] for layout in LAYOUTS}
    for r in range(rounds):
        for layout in (LAYOUTS if r % 2 == 0 else LAYOUTS[::-1]):
            runs[layout].append(fresh_process("bench.layout", "_one", json.dumps({**setting, "layout": layout})))
    ratios = [c["step_s"] / d["step_s"] for c, d in zip(runs["channels_last"], runs["default"])]
    return {"setting": setting, "device": runs["default"][0]["device"], "runs": runs, "ratios": ratios,
            "median": statistics.median(ratios), "interval": median_interval(ratios)}


def main(arch: str = "resnet50", spatial_dims: int = 3, size: int = 32, batch: int = 4, rounds: int = 5,
         steps: int = 6, threads: int | None = 2) -> None:
    """Print the comparison (JSON, then one line)."""
    result = compare(arch, spatial_dims, size, batch, rounds, steps, threads)
    print(json.dumps(result, indent=1))
    low, high, coverage = result["interval"]
    print(f"{arch} {spatial_dims}D, {size} px, {batch} pairs, {result['device']}: channels-last / default step "
          f"{result['median']:.2f} [{low:.2f}, {high:.2f}] (coverage {coverage:.1%}, {rounds} rounds)")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_one":  # one timed layout, in this fresh process
        print(json.dumps(step_seconds(**json.loads(sys.argv[2]))))
    else:
        import fire

        fire.Fire(main)

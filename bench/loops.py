"""The bundle's training and the loops it is compared with, each run in its own process by :mod:`bench.run`:

* ``bundle``: the configs as ``python -m monai.bundle run`` runs them (MONAI's ``ConfigWorkflow``: initialize, then
  ``run``, i.e. the SSL trainer with every handler), timed around the run;
* ``plain``: the bundle's own parsed components (train data loader with its augmentations, network, optimizer,
  learning-rate schedule, SSL loss, the trainer's batch preparation) in a bare PyTorch loop: no ignite engine,
  no handlers (so no EMA target update, checkpoint, export, logging) -- what the bundle machinery costs;
* ``lightly``: for SimCLR, the same network and optimizer with lightly's ``NTXentLoss`` and ``SimCLRTransform``
  (its augmentations on PIL pictures, the bundle's crop size, jitter, blur and normalisation) over the same files.

Each prints one JSON line: ``{"seconds", "samples", "steps", "samples_per_s", "peak_rss_mb"}``; a sample is one
item (all its views).
"""

from __future__ import annotations

import json
import resource
import sys
import time

import torch


def _parser(configs: list[str], overrides: dict):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(configs)
    for key, value in overrides.items():
        parser[key] = value
    parser.parse()
    return parser


def _report(seconds: float, samples: int, steps: int) -> None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "samples": samples, "steps": steps,
                      "samples_per_s": samples / seconds, "peak_rss_mb": peak}))


def bundle(configs: list[str], overrides: dict, epochs: int) -> None:
    """``python -m monai.bundle run`` in-process for ``epochs`` epochs."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=configs, workflow_type=None, **{**overrides, "epochs": epochs})
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    start = time.perf_counter()
    workflow.run()
    seconds = time.perf_counter() - start
    steps = trainer.state.iteration
    _report(seconds, steps * trainer.data_loader.batch_size, steps)


def plain(configs: list[str], overrides: dict, epochs: int) -> None:
    """The bundle's components in a bare loop over ``epochs`` whole epochs."""
    from monai.utils import set_determinism

    parser = _parser(configs, overrides)
    set_determinism(seed=parser.get_parsed_content("seed"))
    trainer = parser.get_parsed_content("train#trainer")
    loader, network, optimizer = trainer.data_loader, trainer.network, trainer.optimizer
    scheduler = parser.get_parsed_content("lr_scheduler") if "lr_scheduler" in parser else None
    network.train()
    samples = steps = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            inputs, _, args, kwargs = trainer.prepare_batch(batch, trainer.state.device)
            loss = trainer.loss_function(network(inputs, *args, **kwargs))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            samples += inputs.shape[0]
            steps += 1
    _report(time.perf_counter() - start, samples, steps)


def lightly_simclr(configs: list[str], overrides: dict, epochs: int) -> None:
    """SimCLR with lightly's loss and augmentations on the bundle's network, optimizer, files and batch."""
    from lightly.loss import NTXentLoss
    from lightly.transforms import SimCLRTransform
    from monai.utils import set_determinism
    from PIL import Image

    parser = _parser(configs, overrides)
    set_determinism(seed=parser.get_parsed_content("seed"))
    items = parser.get_parsed_content("train#datalist")
    view = parser.get("view_transform")  # the raw SimCLRAugment settings (SimCLRAugment's defaults where unset)
    jitter = view.get("jitter", [0.5, 0.5, 0.5, 0.1])
    norm = parser.get_parsed_content("normalization")
    transform = SimCLRTransform(
        input_size=parser.get_parsed_content("image_size"), min_scale=view.get("scale", [0.08, 1.0])[0],
        cj_prob=view.get("jitter_prob", 0.8), cj_strength=1.0, cj_bright=jitter[0], cj_contrast=jitter[1],
        cj_sat=jitter[2], cj_hue=jitter[3], random_gray_scale=view.get("grayscale_prob", 0.0),
        gaussian_blur=view.get("blur_prob", 0.0), normalize={"mean": norm["mean"], "std": norm["std"]})

    class Frames(torch.utils.data.Dataset):
        def __len__(self):
            return len(items)

        def __getitem__(self, i):
            return transform(Image.open(items[i]["image"]).convert("RGB"))

    train = parser.get_parsed_content("train#dataloader")
    loader = torch.utils.data.DataLoader(Frames(), batch_size=train.batch_size, shuffle=True, drop_last=True,
                                         num_workers=train.num_workers)
    network = parser.get_parsed_content("network").train()
    optimizer = parser.get_parsed_content("optimizer")
    criterion = NTXentLoss(temperature=parser.get_parsed_content("temperature"))
    samples = steps = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for x0, x1 in loader:
            z0, z1 = network(x0, x1)
            loss = criterion(z0, z1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            samples += x0.shape[0]
            steps += 1
    _report(time.perf_counter() - start, samples, steps)


LOOPS = {"bundle": bundle, "plain": plain, "lightly": lightly_simclr}

if __name__ == "__main__":  # python -m bench.loops <mode> <configs json> <overrides json> <epochs>
    mode, configs, overrides, epochs = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(int(overrides.pop("torch_threads", torch.get_num_threads())))
    LOOPS[mode](configs, overrides, epochs)

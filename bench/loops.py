"""The bundle's training and the loops it is compared with, each run in its own process by :mod:`bench.run`:

* ``bundle``: the configs as ``python -m monai.bundle run`` runs them (MONAI's ``ConfigWorkflow``: initialize, then
  ``run``, i.e. the SSL trainer with every handler), timed around the run;
* ``plain``: the bundle's own parsed components (train data loader with its augmentations, network, optimizer,
  learning-rate schedule, SSL loss, the trainer's batch preparation) in a bare PyTorch loop: no ignite engine,
  no handlers (so no EMA target update, checkpoint, export, logging) -- what the bundle machinery costs;
* ``lightly:<bundle>``: where lightly has the method (:data:`LIGHTLY`), the same network and optimizer with
  lightly's loss, augmentations (on PIL pictures) and momentum update over the same items: SimCLR
  (``NTXentLoss``, ``SimCLRTransform`` with the bundle's crop size, jitter, blur and normalisation), MoCo v3
  (``BYOLTransform`` views, ``NTXentLoss`` on both query/key pairs) and BYOL (``NegativeCosineSimilarity``,
  ``BYOLTransform`` views of 8-bit grey slices).

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


def _lightly_loop(parser, views, step, epochs: int, momentum=None) -> None:
    """lightly's style of loop: ``views(i)`` gives item ``i``'s views, ``step(network, views)`` the loss; the
    bundle's network, optimizer, batch size and workers; ``momentum(network, progress)`` after each step (the
    momentum methods' target update, with lightly's ``update_momentum``)."""
    from monai.utils import set_determinism

    set_determinism(seed=parser.get_parsed_content("seed"))
    n_items = len(parser.get_parsed_content("train#datalist"))

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return n_items

        def __getitem__(self, i):
            return views(i)

    train = parser.get_parsed_content("train#dataloader")
    loader = torch.utils.data.DataLoader(Items(), batch_size=train.batch_size, shuffle=True, drop_last=True,
                                         num_workers=train.num_workers)
    network = parser.get_parsed_content("network").train()
    optimizer = parser.get_parsed_content("optimizer")
    samples = steps = 0
    total = epochs * len(loader)
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            loss = step(network, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if momentum is not None:
                momentum(network, steps / total)
            samples += batch[0].shape[0]
            steps += 1
    _report(time.perf_counter() - start, samples, steps)


def _picture_views(parser, transform):
    """Item ``i``'s views by ``transform`` from its picture file, read by PIL as RGB (lightly's datasets)."""
    from PIL import Image

    items = parser.get_parsed_content("train#datalist")
    return lambda i: transform(Image.open(items[i]["image"]).convert("RGB"))


def lightly_simclr(configs: list[str], overrides: dict, epochs: int) -> None:
    """SimCLR with lightly's loss and augmentations on the bundle's network, optimizer, files and batch."""
    from lightly.loss import NTXentLoss
    from lightly.transforms import SimCLRTransform

    parser = _parser(configs, overrides)
    view = parser.get("view_transform")  # the raw SimCLRAugment settings (SimCLRAugment's defaults where unset)
    jitter = view.get("jitter", [0.5, 0.5, 0.5, 0.1])
    norm = parser.get_parsed_content("normalization")
    transform = SimCLRTransform(
        input_size=parser.get_parsed_content("image_size"), min_scale=view.get("scale", [0.08, 1.0])[0],
        cj_prob=view.get("jitter_prob", 0.8), cj_strength=1.0, cj_bright=jitter[0], cj_contrast=jitter[1],
        cj_sat=jitter[2], cj_hue=jitter[3], random_gray_scale=view.get("grayscale_prob", 0.0),
        gaussian_blur=view.get("blur_prob", 0.0), normalize={"mean": norm["mean"], "std": norm["std"]})
    criterion = NTXentLoss(temperature=parser.get_parsed_content("temperature"))
    _lightly_loop(parser, _picture_views(parser, transform), lambda net, b: criterion(*net(b[0], b[1])), epochs)


def _momentum(parser):
    """lightly's target update (``update_momentum`` with ``cosine_schedule``) between the bundle's momentum
    bounds, on the wrapper's online / target pair."""
    from lightly.models.utils import update_momentum
    from lightly.utils.scheduler import cosine_schedule

    ema = next(h for h in parser.get("train#handlers") if isinstance(h, dict) and h.get("_target_") == "EMATargetUpdate")
    base = float(_resolve(parser, ema.get("base_momentum", 0.99)))
    final = float(_resolve(parser, ema.get("final_momentum", 1.0)))

    def update(network, progress: float) -> None:
        m = cosine_schedule(int(progress * 10_000), 10_000, base, final)
        update_momentum(network.pair.online, network.pair.target, m)

    return update


def _resolve(parser, value):
    """A raw config value, with ``@id`` references looked up."""
    return parser.get_parsed_content(value[1:]) if isinstance(value, str) and value.startswith("@") else value


def lightly_mocov3(configs: list[str], overrides: dict, epochs: int) -> None:
    """MoCo v3 on the bundle's network, optimizer, files and batch with lightly's BYOL-style asymmetric views (MoCo
    v3's augmentation is BYOL's) and lightly's ``NTXentLoss`` on (q1, k2) and (q2, k1), and lightly's momentum
    update."""
    from lightly.loss import NTXentLoss
    from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform

    parser = _parser(configs, overrides)
    view = parser.get("view_transform")
    size = _resolve(parser, view.get("size", 224))
    scale = _resolve(parser, view.get("scale", [0.08, 1.0]))
    common = dict(input_size=size, min_scale=scale[0])
    transform = BYOLTransform(BYOLView1Transform(**common), BYOLView2Transform(**common))
    criterion = NTXentLoss(temperature=parser.get_parsed_content("temperature"))

    def step(network, batch):
        q1, q2, k1, k2 = network(batch[0], batch[1])
        return criterion(q1, k2) + criterion(q2, k1)

    _lightly_loop(parser, _picture_views(parser, transform), step, epochs, momentum=_momentum(parser))


def lightly_byol(configs: list[str], overrides: dict, epochs: int) -> None:
    """BYOL on the bundle's network, optimizer, slices and batch with lightly's ``NegativeCosineSimilarity``,
    momentum update and BYOL views; the raw MR intensities are min-max scaled to 8-bit grey PIL pictures (lightly's
    transforms take PIL), jitter limited to the bundle's brightness / contrast, no grey / blur / solarize steps."""
    from lightly.loss import NegativeCosineSimilarity
    from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform
    from monai.transforms import Compose
    from PIL import Image

    parser = _parser(configs, overrides)
    view = parser.get("view_transform")
    load = Compose(parser.get_parsed_content("train#load_transforms"))
    items = parser.get_parsed_content("train#datalist")
    common = dict(input_size=_resolve(parser, view.get("size", 224)), min_scale=view.get("scale", [0.08, 1.0])[0],
                  cj_bright=view.get("brightness", 0.2), cj_contrast=view.get("contrast", 0.2), cj_sat=0.0, cj_hue=0.0,
                  random_gray_scale=0.0, gaussian_blur=0.0, solarization_prob=0.0,
                  normalize={"mean": [0.5], "std": [0.5]})
    transform = BYOLTransform(BYOLView1Transform(**common), BYOLView2Transform(**common))

    def views(i):
        x = load(dict(items[i]))["image"][0].numpy()
        x = (255 * (x - x.min()) / max(float(x.max() - x.min()), 1e-6)).astype("uint8")
        return transform(Image.fromarray(x, mode="L"))

    criterion = NegativeCosineSimilarity()

    def step(network, batch):
        p0, p1, z0, z1 = network(batch[0], batch[1])
        return 0.5 * (criterion(p0, z1) + criterion(p1, z0))

    _lightly_loop(parser, views, step, epochs, momentum=_momentum(parser))


LOOPS = {"bundle": bundle, "plain": plain}
#: bundle -> its lightly loop (lightly has the method)
LIGHTLY = {"simclr_cholec": lightly_simclr, "mocov3_hyperkvasir": lightly_mocov3, "byol_acdc": lightly_byol}

if __name__ == "__main__":  # python -m bench.loops <mode> <configs json> <overrides json> <epochs>
    mode, configs, overrides, epochs = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(int(overrides.pop("torch_threads", torch.get_num_threads())))
    LOOPS[mode](configs, overrides, epochs) if mode in LOOPS else LIGHTLY[mode.split(":", 1)[1]](configs, overrides, epochs)

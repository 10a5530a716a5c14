"""The bundle's training and the loops it is compared with, each run in its own process by :mod:`bench.run`:

* ``bundle``: the configs as ``python -m monai.bundle run`` runs them (MONAI's ``ConfigWorkflow``: initialize, then
  ``run``, i.e. the SSL trainer with every handler), timed around the run;
* ``plain``: the bundle's own parsed components (train data loader with its augmentations, network, optimizer,
  SSL loss, the trainer's batch preparation) in a bare PyTorch loop, with the training rules among its handlers
  (:data:`TRAINING_RULES`: learning-rate schedule, EMA target update, prototype freeze, queue start, cluster
  memory) fired at the trainer's events; no ignite engine run, no other handler (checkpoint, export, validation,
  monitors, logging) -- what the bundle machinery costs;
* ``lightly:<bundle>``: where lightly has the method (:data:`LIGHTLY`), the same network and optimizer with
  lightly's loss, augmentations (on PIL pictures) and update rules over the same items: SimCLR
  (``NTXentLoss``, ``SimCLRTransform`` with the bundle's crop size, jitter, blur and normalisation), MoCo v3
  (``BYOLTransform`` views, ``NTXentLoss`` on both query/key pairs), BYOL (``NegativeCosineSimilarity``,
  ``BYOLTransform`` views of 8-bit grey slices), Barlow Twins (``BarlowTwinsLoss``, ``BYOLTransform`` views with the
  bundle's settings), SwAV (``SwaVLoss``, ``SwaVTransform`` multi-crop, lightly's prototype normalisation and
  freeze; the bundle network's own queue) and MAE (``MAETransform`` views, the bundle network's own masking,
  lightly's ``patchify`` / ``normalize_mean_var`` + MSE on the masked patches). Each loop's docstring says what is
  lightly's and what is the bundle's.

Each prints one JSON line: ``{"seconds", "samples", "steps", "samples_per_s", "peak_rss_mb", "loss_first",
"loss_last", "data_s", "step_s", "other_s", "end_s"}`` (the first and last step's loss; where the seconds went,
see :class:`Phases`), ``"peak_gpu_mb"`` where the run trained on a GPU, and in bundle runs ``"channels_last"``, the
layout the network trained in; a sample is one network input (all its views): one item, or one crop of an item where
the bundle draws several (``vitautoenc_ct``).
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


class Phases:
    """Where a timed run's seconds went: ``data`` waiting for the loader's next batch, ``step`` from a batch's
    arrival to the end of its iteration (batch preparation, forward, loss, backward, optimizer step and every
    per-iteration handler or rule), and the rest, ``other = seconds - data - step``: start-up, epoch boundaries
    (new loader iterators, epoch-end handlers such as checkpoint and export) and the end of the run; ``end``, part
    of ``other``: from the end of the last step to the end of the run, i.e. the last epoch's epoch-end handlers and
    the run's completion: the bundle's final checkpoint and export, written and on disk (0 for the bare loops)."""

    def __init__(self):
        self.data = self.step = self.end = 0.0
        self._mark = self.last_done = 0.0

    def waiting(self, *_) -> None:
        """The loop asks the loader for a batch."""
        self._mark = time.perf_counter()

    def arrived(self, *_) -> None:
        """The batch is there."""
        now = time.perf_counter()
        self.data += now - self._mark
        self._mark = now

    def done(self, *_) -> None:
        """The iteration is over."""
        self.last_done = time.perf_counter()
        self.step += self.last_done - self._mark

    def batches(self, loader):
        """Iterate ``loader`` (one epoch), timing each wait and each iteration (the loop body between yields). The new
        iterator (the workers' start or their next pass) is made inside the first wait, where the bundle's engine
        makes it (ignite's ``GET_BATCH_STARTED`` comes before it asks for the epoch's iterator)."""
        self.waiting()
        it = iter(loader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            self.arrived()
            yield batch
            self.done()
            self.waiting()


def _report(seconds: float, samples: int, steps: int, losses: list[float] | None = None,
            phases: Phases | None = None, **extra) -> None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"seconds": seconds, "samples": samples, "steps": steps, "samples_per_s": samples / seconds,
           "peak_rss_mb": peak, **extra}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # the run trained on the GPU
        # the most GPU memory its tensors held at once: the peak of its largest step (activations, gradients,
        # optimizer state and the batch; not the allocator's cached blocks)
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if losses:  # the loss of the first and of the last step (a check that the loop trains on something)
        out.update(loss_first=losses[0], loss_last=losses[-1])
    if phases is not None:
        out.update(data_s=phases.data, step_s=phases.step, other_s=seconds - phases.data - phases.step,
                   end_s=phases.end)
    print(json.dumps(out))


def bundle(configs: list[str], overrides: dict, epochs: int) -> None:
    """``python -m monai.bundle run`` in-process for ``epochs`` epochs. The samples are counted from the batches
    (the first view's rows, as the other modes count network inputs: a bundle that draws several crops per item,
    ``RandSpatialCropSamplesd``, has more rows than ``batch_size``), with each step's loss, by one
    ``ITERATION_COMPLETED`` handler."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=configs, workflow_type=None, **{**overrides, "epochs": epochs})
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    rows, losses, phases = [], [], Phases()

    def count(engine) -> None:
        batch = engine.state.batch  # MONAI decollates it into one dict per row (decollate=True) or leaves it a dict
        rows.append(len(batch) if isinstance(batch, (list, tuple)) else len(batch[trainer.view_keys[0]]))
        output = engine.state.output  # decollated too: every row carries the batch's loss
        losses.append(float((output[0] if isinstance(output, (list, tuple)) else output)["loss"]))
        phases.done()

    trainer.add_event_handler(Events.GET_BATCH_STARTED, phases.waiting)
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, phases.arrived)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, count)  # after the bundle's own handlers
    start = time.perf_counter()
    workflow.run()
    end = time.perf_counter()
    phases.end = end - phases.last_done
    _report(end - start, sum(rows), trainer.state.iteration, losses, phases,
            channels_last=trained_channels_last(trainer.network))


def trained_channels_last(network: torch.nn.Module) -> bool | None:
    """Whether the trained ``network``'s convolution kernels (4-D and 5-D weights wider than 1 in space) are all stored
    channels-last, some of them not contiguous (a kernel of one input channel is both): the layout the run
    trained in (None: the network has no such kernel)."""
    from monai_ssl_ext.memory_format import to_channels_last

    kernels = [p for p in network.parameters() if p.dim() in (4, 5) and max(p.shape[2:]) > 1]
    if not kernels:
        return None
    return (all(p.stride() == to_channels_last(p).stride() for p in kernels)  # the package's layout, as it stores it
            and not all(p.is_contiguous() for p in kernels))


#: the training rules among a bundle's ``train#handlers`` (class names): the learning-rate schedule (per iteration or
#: per epoch, as the bundle's ``LrScheduleHandler`` says), the momentum target update (BYOL, MoCo v3), the prototype
#: freeze and queue start (SwAV), the cluster memory (DeepCluster-v2, the joint 2D-3D method: without it the memory
#: bank is empty and the loss has no target). The plain loop runs them; every other handler (checkpoint, export,
#: validation, kNN monitor, logging, progress, NaN guard, tracking) is the bundle machinery it leaves out.
TRAINING_RULES = ("LrScheduleHandler", "EMATargetUpdate", "FreezePrototypes", "QueueStart", "ClusterMemory")


def _training_rules(parser, trainer, loader, epochs: int):
    """The bundle's :data:`TRAINING_RULES` handlers attached to a bare ignite ``Engine`` that is never run, only used to
    fire the engine's events at the plain loop's matching points (so each rule runs where it would in the trainer,
    with the counters it reads: epoch, iteration, epoch length, the run's epochs); None when the bundle has none."""
    from ignite.engine import Engine
    from monai.engines.utils import IterationEvents

    rules = [h for h in parser.get_parsed_content("train#handlers") if type(h).__name__ in TRAINING_RULES]
    if not rules:
        return None
    hub = Engine(lambda engine, batch: None)
    hub.register_events(*IterationEvents)
    # what the rules read from the engine: the trainer's loader, batch preparation, device and accumulation
    hub.data_loader, hub.prepare_batch = loader, trainer.prepare_batch
    hub.accumulation_steps = getattr(trainer, "accumulation_steps", 1)
    hub.state.device, hub.state.max_epochs, hub.state.epoch_length = trainer.state.device, epochs, len(loader)
    hub.state.epoch = hub.state.iteration = 0
    for rule in rules:
        rule.attach(hub)
    return hub


def cuda_amp(trainer) -> bool:
    """Whether the trainer's iteration runs under CUDA autocast with a ``GradScaler``, as MONAI's ``Trainer.run``
    decides it: ``amp`` on a CUDA device. Read from ``amp`` and the device, not from ``trainer.scaler``: MONAI makes
    the scaler in ``run()``, which the plain loop never calls (before, the plain loop took ``scaler is None`` for amp
    off and would have trained in float32 against the bundle's float16 on a GPU). On a CPU the SSL inferer autocasts
    the forward in bfloat16 itself (:class:`monai_ssl_ext.engines.ssl_trainer.ViewsInferer`)."""
    return bool(trainer.amp) and torch.device(trainer.state.device).type == "cuda"


def plain(configs: list[str], overrides: dict, epochs: int) -> None:
    """The bundle's components in a bare loop over ``epochs`` whole epochs (the run's length is ``epochs``, as in
    ``bundle`` mode, for the schedule and the rules), with the bundle's training rules (:data:`TRAINING_RULES`:
    schedule, momentum update, prototype / queue / cluster rules) fired at the trainer's events: epoch start,
    forward, loss, backward, optimizer step, iteration end, epoch end. The forward is the trainer's inferer, under the
    trainer's amp (autocast and gradient scaling) where it has it, so both modes train in the same precision."""
    from ignite.engine import Events
    from monai.engines.utils import IterationEvents
    from monai.utils import set_determinism

    parser = _parser(configs, {**overrides, "epochs": epochs})
    set_determinism(seed=parser.get_parsed_content("seed"))
    trainer = parser.get_parsed_content("train#trainer")
    loader, network, optimizer = trainer.data_loader, trainer.network, trainer.optimizer
    amp = cuda_amp(trainer)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    hub = _training_rules(parser, trainer, loader, epochs)
    fire = (lambda event: None) if hub is None else hub.fire_event
    network.train()
    samples = steps = 0
    losses, phases = [], Phases()
    start = time.perf_counter()
    for epoch in range(epochs):
        if hub is not None:
            hub.state.epoch = epoch + 1
        fire(Events.EPOCH_STARTED)
        for batch in phases.batches(loader):
            if hub is not None:
                hub.state.iteration = steps + 1
            inputs, _, args, kwargs = trainer.prepare_batch(batch, trainer.state.device)
            with torch.autocast("cuda", enabled=amp, **trainer.amp_kwargs):
                outputs = trainer.inferer(inputs, network, *args, **kwargs)
                fire(IterationEvents.FORWARD_COMPLETED)
                loss = trainer.loss_function(outputs)
                fire(IterationEvents.LOSS_COMPLETED)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            fire(IterationEvents.BACKWARD_COMPLETED)
            scaler.step(optimizer)  # optimizer.step() when disabled
            scaler.update()
            fire(IterationEvents.MODEL_COMPLETED)
            fire(Events.ITERATION_COMPLETED)
            losses.append(float(loss))
            samples += inputs.shape[0]
            steps += 1
        fire(Events.EPOCH_COMPLETED)
    _report(time.perf_counter() - start, samples, steps, losses, phases)


def _lightly_loop(parser, views, step, epochs: int, momentum=None, before_epoch=None, before_step=None) -> None:
    """lightly's style of loop: ``views(i)`` gives item ``i``'s views, ``step(network, views)`` the loss; the
    bundle's network, optimizer, batch size and workers (persistent and prefetching as the bundle's);
    ``momentum(network, progress)`` after each step (the momentum methods' target update, with lightly's
    ``update_momentum``); ``before_epoch(network, epoch)`` and
    ``before_step(network, step)`` (0-based) where a method has rules there (SwAV's queue start, prototype freeze and
    normalisation). The network is the bundle's ``network`` in PyTorch's default memory layout, as a user's loop has
    it: the bundle's ``channels_last`` (on in SimCLR and BYOL, where it was measured faster) is the bundle's, not
    lightly's. ``amp`` is CUDA autocast with gradient scaling on a GPU and nothing on a CPU (the bundles' ``amp`` is
    off on CPUs)."""
    from monai.utils import convert_to_tensor, set_determinism

    set_determinism(seed=parser.get_parsed_content("seed"))
    n_items = len(parser.get_parsed_content("train#datalist"))

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return n_items

        def __getitem__(self, i):
            return views(i)

    train = parser.get_parsed_content("train#dataloader")
    # the bundle loader's workers, kept between epochs and prefetching as there (a DataLoader setting, not lightly's)
    loader = torch.utils.data.DataLoader(Items(), batch_size=train.batch_size, shuffle=True, drop_last=True,
                                         num_workers=train.num_workers, persistent_workers=train.persistent_workers,
                                         prefetch_factor=train.prefetch_factor)
    network = parser.get_parsed_content("network").train()
    optimizer = parser.get_parsed_content("optimizer")
    device = next(network.parameters()).device
    # on a GPU the batches go where the network is, and the bundle's amp is CUDA autocast with gradient scaling, as a
    # user's loop writes it, so that both train in the same precision (not run here: no GPU was lent)
    amp = device.type == "cuda" and bool(parser.get_parsed_content("amp"))
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    samples = steps = 0
    losses, phases = [], Phases()
    total = epochs * len(loader)
    start = time.perf_counter()
    for epoch in range(epochs):
        if before_epoch is not None:
            before_epoch(network, epoch)
        for batch in phases.batches(loader):
            if before_step is not None:
                before_step(network, steps)
            if device.type != "cpu":
                batch = convert_to_tensor(batch, device=device, track_meta=False)
            with torch.autocast("cuda", enabled=amp):
                loss = step(network, batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)  # optimizer.step() when disabled
            scaler.update()
            if momentum is not None:
                momentum(network, steps / total)
            losses.append(float(loss))
            samples += batch[0].shape[0]
            steps += 1
    _report(time.perf_counter() - start, samples, steps, losses, phases)


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
    v3's augmentation is BYOL's; :func:`_asymmetric_views`, as for Barlow Twins) and lightly's ``NTXentLoss`` on
    (q1, k2) and (q2, k1), and lightly's momentum update."""
    from lightly.loss import NTXentLoss

    parser = _parser(configs, overrides)
    transform = _asymmetric_views(parser, parser.get("view_transform"))
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


def _asymmetric_views(parser, view: dict):
    """lightly's ``BYOLTransform`` (``BYOLView1Transform`` / ``BYOLView2Transform``: blur 1.0 / 0.1, solarize 0.0 /
    0.2) with the bundle's ``AsymmetricAugment`` settings (its defaults where the config leaves them out)."""
    from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform

    def get(key: str, default):
        return _resolve(parser, view.get(key, default))

    jitter = get("jitter", [0.4, 0.4, 0.2, 0.1])
    blur, solarize = get("blur_probs", [1.0, 0.1]), get("solarize_probs", [0.0, 0.2])
    common = dict(input_size=get("size", 224), min_scale=get("scale", [0.08, 1.0])[0], hf_prob=get("hflip_prob", 0.5),
                  cj_prob=get("jitter_prob", 0.8), cj_strength=1.0, cj_bright=jitter[0], cj_contrast=jitter[1],
                  cj_sat=jitter[2], cj_hue=jitter[3], random_gray_scale=get("grayscale_prob", 0.2),
                  sigmas=tuple(get("blur_sigma", [0.1, 2.0])),
                  normalize={"mean": list(get("mean", [0.485, 0.456, 0.406])),
                             "std": list(get("std", [0.229, 0.224, 0.225]))})
    return BYOLTransform(BYOLView1Transform(**common, gaussian_blur=blur[0], solarization_prob=solarize[0]),
                         BYOLView2Transform(**common, gaussian_blur=blur[1], solarization_prob=solarize[1]))


def lightly_barlowtwins(configs: list[str], overrides: dict, epochs: int) -> None:
    """Barlow Twins with lightly's ``BarlowTwinsLoss(lambda_param=<bundle lambd>)`` and lightly's ``BYOLTransform``
    views (the transform of lightly's Barlow Twins examples; its two view transforms are the reference code's
    asymmetric pair, blur 1.0 / 0.1 and solarize 0.0 / 0.2, as the bundle's ``AsymmetricAugment``) with the bundle's
    crop size, scale, jitter, grey, blur sigma and normalisation, on PIL pictures.

    The bundle's: the parsed ``BarlowTwins`` network (backbone + projector; ``forward(x1, x2) -> (z1, z2)``), its LARS
    optimizer (bias / norm groups), items and batch size. lightly's: loss, transforms. Differences that remain:
    lightly's crop is bilinear (the bundle's bicubic), its blur is PIL's ``GaussianBlur(radius=sigma)`` (the bundle's
    a torchvision kernel of about 10% of the crop). The two losses are the same number in one process (batch
    statistics, biased variance, eps 1e-5 inside the square root; ``tests/scripts/test_bench.py`` checks it).
    No learning-rate schedule (as in every lightly loop here)."""
    from lightly.loss import BarlowTwinsLoss

    parser = _parser(configs, overrides)
    transform = _asymmetric_views(parser, parser.get("view_transform"))
    criterion = BarlowTwinsLoss(lambda_param=float(parser.get_parsed_content("lambd")))
    _lightly_loop(parser, _picture_views(parser, transform), lambda net, b: criterion(*net(b[0], b[1])), epochs)


def lightly_swav(configs: list[str], overrides: dict, epochs: int) -> None:
    """SwAV with lightly's ``SwaVLoss`` and ``SwaVTransform`` (multi-crop: ``n_global_crops`` crops of
    ``image_size`` at ``global_crop_scale`` and ``n_local_crops`` of ``local_image_size`` at ``local_crop_scale``;
    flip, jitter, grey, blur and normalisation from the bundle's ``view_augment``; on PIL pictures, the grey slices
    read as RGB as the bundle's ``PictureChannelsd`` makes 3 channels), and lightly's prototype rules: the
    prototypes normalised with ``lightly.models.utils.normalize_weight`` before every step and frozen
    (``requires_grad_(step >= n)``, ``SwaVPrototypes``' rule) for the bundle's ``freeze_prototypes_iters`` steps.

    The bundle's: the parsed ``SwAV`` network (``forward(*views) -> (scores, queue_scores)``: trunk, projection MLP,
    unit embeddings, prototype scores; its forward also normalises the prototypes, a no-op after lightly's), its
    LARS optimizer, items and batch size, and the feature queue: the network's own queues (lightly's
    ``MemoryBankModule`` would need the embeddings, which the network's forward does not return), switched on at
    the bundle's ``queue_start_epoch`` as its ``QueueStart`` handler does, their scores passed to lightly's loss as
    ``queue_outputs``. lightly's loss gets the bundle's temperature, Sinkhorn epsilon and iterations (0.1, 0.05, 3:
    lightly's defaults too); it codes in the scores' dtype without subtracting the maximum (the bundle's in float32
    after it), the same codes at epsilon 0.05 on unit scores. lightly's blur is PIL's ``GaussianBlur(radius=sigma)``
    (the bundle's a torchvision kernel of about 10% of the crop; both crop bilinearly). No learning-rate schedule (as
    in every lightly loop here)."""
    from lightly.loss import SwaVLoss
    from lightly.models.utils import normalize_weight
    from lightly.transforms import SwaVTransform

    parser = _parser(configs, overrides)
    aug = {**{"hflip_prob": 0.5, "jitter": [0.4, 0.4, 0.2, 0.1], "jitter_prob": 0.8, "grayscale_prob": 0.0,
              "blur_prob": 0.0, "blur_sigma": [0.1, 2.0]}, **parser.get_parsed_content("view_augment")}
    get = parser.get_parsed_content
    n_global, n_local = int(get("n_global_crops")), int(get("n_local_crops"))
    norm = get("normalization")
    transform = SwaVTransform(
        crop_sizes=(get("image_size"), get("local_image_size")), crop_counts=(n_global, n_local),
        crop_min_scales=(get("global_crop_scale")[0], get("local_crop_scale")[0]),
        crop_max_scales=(get("global_crop_scale")[1], get("local_crop_scale")[1]), hf_prob=aug["hflip_prob"],
        cj_prob=aug["jitter_prob"], cj_strength=1.0, cj_bright=aug["jitter"][0], cj_contrast=aug["jitter"][1],
        cj_sat=aug["jitter"][2], cj_hue=aug["jitter"][3], random_gray_scale=aug["grayscale_prob"],
        gaussian_blur=aug["blur_prob"], sigmas=tuple(aug["blur_sigma"]),
        normalize={"mean": list(norm["mean"]), "std": list(norm["std"])})
    criterion = SwaVLoss(temperature=float(get("temperature")), sinkhorn_iterations=int(get("sinkhorn_iterations")),
                         sinkhorn_epsilon=float(get("sinkhorn_epsilon")))
    frozen, queue_start = int(get("freeze_prototypes_iters")), get("queue_start_epoch")

    def before_epoch(network, epoch: int) -> None:  # the bundle's QueueStart rule (0-based epochs)
        network.use_queue = queue_start is not None and network.queues is not None and epoch >= int(queue_start)

    def before_step(network, step: int) -> None:  # lightly's SwaVPrototypes rules
        with torch.no_grad():
            for head in network.prototypes.heads:
                normalize_weight(head.weight)
        network.prototypes.requires_grad_(step >= frozen)

    def step(network, batch):
        scores, queue_scores = network(*batch)
        return criterion(list(scores[:n_global]), list(scores[n_global:]), queue_scores).squeeze()

    _lightly_loop(parser, _picture_views(parser, transform), step, epochs, before_epoch=before_epoch,
                  before_step=before_step)


def lightly_mae(configs: list[str], overrides: dict, epochs: int) -> None:
    """MAE with lightly's ``MAETransform`` views (bicubic ``RandomResizedCrop`` of ``image_size`` at
    ``crop_scale``, horizontal flip, the bundle's normalisation; on PIL pictures) and lightly's reconstruction
    loss as its MAE examples compute it: ``torch.nn.MSELoss`` between the predictions of the masked patches and their
    pixels (``lightly.models.utils.patchify`` of the input), normalised per patch with
    ``lightly.models.utils.normalize_mean_var`` when the bundle has ``norm_pix_loss`` (lightly has no MAE loss
    class; this is the same number as the bundle's ``MAELoss``, which ``tests/scripts/test_bench.py`` checks).

    The bundle's: the parsed ``MAE`` network with its own masking inside ``forward`` (``mask_ratio``, one uniformly
    random subset per sample, as lightly's ``random_token_mask``; lightly's masking cannot be put into the bundle's
    network, whose forward masks itself), its encoder / decoder, AdamW with its weight-decay groups, items and batch
    size. The network's ``(pred, target, mask)`` output is used for ``pred`` and ``mask`` only. No learning-rate
    schedule (as in every lightly loop here)."""
    from lightly.transforms import MAETransform

    parser = _parser(configs, overrides)
    get = parser.get_parsed_content
    norm = get("normalization")
    transform = MAETransform(input_size=get("image_size"), min_scale=get("crop_scale")[0],
                             normalize={"mean": list(norm["mean"]), "std": list(norm["std"])})
    patch, norm_pix = int(get("patch_size")), bool(get("norm_pix_loss"))

    def step(network, batch):
        pred, _, mask = network(batch[0])
        return mae_reconstruction_loss(pred, batch[0], mask, patch, norm_pix)

    _lightly_loop(parser, _picture_views(parser, transform), step, epochs)


def mae_reconstruction_loss(pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, patch_size: int,
                            norm_pix: bool) -> torch.Tensor:
    """The reconstruction loss of lightly's MAE examples: ``torch.nn.MSELoss`` between the predictions of the masked
    patches (``mask`` 1) and those patches of ``images`` (``lightly.models.utils.patchify``), normalised per patch by
    ``lightly.models.utils.normalize_mean_var`` with ``norm_pix``."""
    from lightly.models.utils import normalize_mean_var, patchify

    target = patchify(images, patch_size)
    if norm_pix:
        target = normalize_mean_var(target, dim=-1)
    masked = mask.bool()
    return torch.nn.functional.mse_loss(pred[masked], target[masked])


LOOPS = {"bundle": bundle, "plain": plain}
#: bundle -> its lightly loop (lightly has the method)
LIGHTLY = {"simclr_cholec": lightly_simclr, "mocov3_hyperkvasir": lightly_mocov3, "byol_acdc": lightly_byol,
           "barlowtwins_hyperkvasir": lightly_barlowtwins, "swav_slices": lightly_swav, "mae_hyperkvasir": lightly_mae}

if __name__ == "__main__":  # python -m bench.loops <mode> <configs json> <overrides json> <epochs>
    mode, configs, overrides, epochs = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(int(overrides.pop("torch_threads", torch.get_num_threads())))
    LOOPS[mode](configs, overrides, epochs) if mode in LOOPS else LIGHTLY[mode.split(":", 1)[1]](configs, overrides, epochs)

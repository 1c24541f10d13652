"""Bench: train images/s of three architectures, our input pipeline vs two others.

Three networks from the default 7-block space (``configs/cifar10.yaml``, the seed's
scenario): ``--candidates`` draws of an Optuna RandomSampler (seed 0, in memory), built
at 32x32 on the meta device, ordered by MACs; "small" is the fewest MACs, "median" the
median, "large" the ``--large-quantile`` (default 0.9: the maximum of 200 random draws is
a 28 GMAC outlier a CPU cannot step at batch 128). Deterministic. Each network trains on
random uint8 images of CIFAR-10's shape (3x32x32, 10 classes) through three pipelines:

* (a) ours: the images live on the training device as uint8; a batch is an index gather
  of this epoch's permutation, then ``job.ml.augment.train_augment`` (the seed's policy:
  RandAugment N=2 M=15 of 31, per-image draws, flip, Cutout), then the normalisation;
* (b) ours with augmentation off: the same without ``train_augment``;
* (c) conventional torchvision: a ``Dataset`` whose ``__getitem__`` applies
  ``transforms.v2`` per image (RandAugment(2, 15, 31, fill 128), RandomHorizontalFlip,
  ToDtype, RandomErasing as Cutout (p 0.8, a square of 0.45 of the side), Normalize), a
  ``DataLoader`` with ``--workers`` processes (default: one per core, at most 8; pinned
  memory on CUDA), each batch copied to the device.

All three feed one timing loop, one model and one optimizer: ``job.ml.train.Trainer.step``
itself (channels_last, bf16 autocast on CUDA, cross-entropy, SGD with the seed's recipe,
the per-step cosine schedule, the loss summed on the device and read back at the end of
a round), its stages named for ``--profile`` through its ``stage`` hook.
Timing: ``--warmup`` untimed steps on (a) (allocator, thread pools, compilation),
one on each other pipeline (for (c), starting its workers); then ``--rounds`` rounds in
turn (a, b, c, the order rotating), each one untimed step and then a fixed number of
timed steps, set once per network so that a round of (b) lasts about ``--round-s`` (a
network whose step takes longer gets 1 timed step and at most 2 rounds). A pipeline's
figure is its best round: on a shared machine, load only ever slows a round down. For
(c) each round starts a fresh iterator over the same persistent workers; its untimed
step absorbs the fill, and a 0.3 s pause after it lets the workers' prefetch finish.

    .venv/bin/python bench/train.py [--device cpu|cuda] [--batches 128]
        [--models small,median,large] [--rounds 5] [--round-s 2] [--workers N] [--compile]
        [--profile]

``--profile`` then runs one more round of each pipeline under torch.profiler and prints
the host milliseconds per step of each stage: the batch source (``augment`` within it),
forward, loss, backward, optimizer (zero_grad, step, schedule); on CUDA these are launch
times, not the GPU's.

The last lines are one per network and batch size: ``RESULT model=<name>
aug_cost_ratio=<a/b> vs_torchvision=<a/c> batch=<B> ours_ips=… noaug_ips=…
torchvision_ips=… macs=… params=…``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import optuna
import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from job.config import AugmentConfig, Config, TrainConfig, load_config
from job.ml.augment import train_augment
from job.ml.data import CIFAR10_MEAN, CIFAR10_STD, Dataset, Split
from job.ml.model import ModelError, ModelSpec, build_model, count_macs, count_params
from job.ml.train import Trainer
from job.search.space import sample_model

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE, CLASSES = 32, 10
NAMES = ("small", "median", "large")
AUGMENT_OFF = AugmentConfig(enabled=False)  # the pipelines below make the batches
Batch = tuple[Tensor, Tensor]  # (B, 3, 32, 32) float in the model's format, (B,) int64


@dataclass(frozen=True)
class Picked:
    name: str
    spec: ModelSpec
    macs: int
    params: int


def seed_config() -> Config:
    """The seed's scenario: the default space, RandAugment N=2 M=15, SGD, batch 128."""
    return load_config(ROOT / "configs" / "cifar10.yaml")


def pick_models(config: Config, candidates: int, large_quantile: float) -> list[Picked]:
    """Small, median and large by MACs among `candidates` random draws that run at 32x32."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    found: list[tuple[int, int, ModelSpec, int]] = []  # (MACs, trial number, spec, params)
    for _ in range(candidates):
        trial = study.ask()
        spec = sample_model(trial, config, CLASSES)
        try:
            with torch.device("meta"):  # shapes only: no weights, no arithmetic
                model = build_model(spec)
                macs = count_macs(model, IMAGE_SIZE)
        except ModelError:
            continue
        found.append((macs, trial.number, spec, count_params(model)))
    found.sort(key=lambda f: (f[0], f[1]))
    last = len(found) - 1
    picked = []
    for name, i in zip(NAMES, (0, last // 2, round(large_quantile * last)), strict=True):
        macs, _, spec, params = found[i]
        picked.append(Picked(name, spec, macs, params))
    return picked


def synthetic(n: int, device: torch.device) -> Dataset:
    """`n` random uint8 images of CIFAR-10's shape with random labels, on `device`."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=g)
    train = Split(x, torch.randint(0, CLASSES, (n,), generator=g))
    empty = Split(x[:0], train.y[:0])
    classes = tuple(str(i) for i in range(CLASSES))
    return Dataset("synthetic", train, empty, empty, classes, CIFAR10_MEAN, CIFAR10_STD, "-")


# ---- the step: job.ml.train.Trainer's own ------------------------------------------------


def make_trainer(spec: ModelSpec, recipe: TrainConfig, data: Dataset) -> Trainer:
    """The product's Trainer on the bench data; its epochs so many that the cosine
    schedule stays at the top for the whole bench (as a long run's first epochs do)."""
    device = data.train.x.device
    torch.manual_seed(0)
    recipe = recipe.model_copy(update={"epochs": 10**6})
    trainer = Trainer(build_model(spec), AUGMENT_OFF, recipe, data, device)
    trainer.start_epoch(1)  # the loss sum the step adds to
    return trainer


def sync(trainer: Trainer) -> float:
    """The product's once-per-epoch host read of the summed loss; waits for the device."""
    assert trainer.pos.loss_sum is not None
    value = float(trainer.pos.loss_sum)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    return value


# ---- the three pipelines: each round gets a fresh batch source --------------------------


class Pipeline(Protocol):
    label: str

    def begin(self) -> Callable[[], Batch]: ...

    def end(self) -> None: ...


class Ours:
    """(a) and (b): resident uint8 data, index gathers of a per-epoch permutation, batched
    augmentation (or none) and the normalisation, all on the training device."""

    def __init__(self, data: Dataset, policy: AugmentConfig, batch: int, trainer: Trainer) -> None:
        self.label = "(a) ours" if policy.enabled else "(b) ours, augmentation off"
        self.data, self.policy, self.batch = data, policy, batch
        device = trainer.device
        self.norm = trainer.norm  # job.ml.train.Normalize, in the model's memory format
        self.gen = torch.Generator(device).manual_seed(0)  # pixel draws, on the device
        self.choices = torch.Generator().manual_seed(0)  # per-image op picks, on the host
        self.order, self.at = torch.empty(0, dtype=torch.long), 0

    def _indices(self) -> Tensor:
        n = len(self.data.train)
        if self.at + self.batch > len(self.order):  # a new epoch: a new permutation
            self.order, self.at = torch.randperm(n, generator=self.gen, device=self.gen.device), 0
        self.at += self.batch
        return self.order[self.at - self.batch : self.at]  # (B,)

    def begin(self) -> Callable[[], Batch]:
        def next_batch() -> Batch:
            idx = self._indices()
            x = self.data.train.x[idx]  # (B, 3, S, S) uint8
            if self.policy.enabled:
                with record_function("augment"):
                    x = train_augment(x, self.policy, self.gen, self.choices)
            return self.norm(x), self.data.train.y[idx]

        return next_batch

    def end(self) -> None:
        pass


class _PerImage(torch.utils.data.Dataset[tuple[Tensor, int]]):
    def __init__(self, x: Tensor, y: Tensor, transform: Callable[[Tensor], Tensor]) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(self.x[i]), int(self.y[i])


def torchvision_transform(policy: AugmentConfig) -> Callable[[Tensor], Tensor]:
    """The seed's train pipeline in torchvision v2, applied to one (3, H, W) uint8 image."""
    from torchvision.transforms import v2

    side = policy.cutout_size**2  # the box's share of the image
    transform: Callable[[Tensor], Tensor] = v2.Compose(
        [
            v2.RandAugment(
                num_ops=policy.n_select,
                magnitude=policy.level or 0,
                num_magnitude_bins=policy.n_level,
                fill=policy.fill,
            ),
            v2.RandomHorizontalFlip(policy.flip_p),
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomErasing(
                p=policy.cutout_p, scale=(side, side), ratio=(1.0, 1.0), value=policy.fill / 255
            ),
            v2.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )
    return transform


class Torchvision:
    """(c): per-image torchvision transforms in DataLoader worker processes."""

    def __init__(
        self, data: Dataset, policy: AugmentConfig, batch: int, trainer: Trainer, workers: int
    ) -> None:
        device = trainer.device
        self.label = f"(c) torchvision per image, DataLoader({workers} workers)"
        cpu = data.train.to("cpu")
        dataset = _PerImage(cpu.x, cpu.y, torchvision_transform(policy))
        sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=1 << 40)
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch,
            sampler=sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
            persistent_workers=workers > 0,
        )
        self.device, self.format = device, trainer.norm.format
        self.it: Iterator[Any] | None = None

    def begin(self) -> Callable[[], Batch]:
        self.it = iter(self.loader)

        def next_batch() -> Batch:
            assert self.it is not None
            x, y = next(self.it)
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.format)
            return x, y.to(self.device, non_blocking=True)

        return next_batch

    def end(self) -> None:
        self.it = None
        time.sleep(0.3)  # let the workers finish their prefetch before the next pipeline


# ---- timing -----------------------------------------------------------------------------


def timed_round(trainer: Trainer, pipeline: Pipeline, steps: int, untimed: int) -> float:
    """Seconds for `steps` steps after `untimed` ones, from the first timed step to the
    loss read back."""
    next_batch = pipeline.begin()

    def step() -> None:
        with record_function("batch"):
            batch = next_batch()
        trainer.step(*batch, stage=record_function)  # the product's step, its stages named

    try:
        for _ in range(untimed):
            step()
        sync(trainer)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(trainer)
        return time.perf_counter() - start
    finally:
        pipeline.end()


def bench_model(
    trainer: Trainer, pipelines: list[Pipeline], batch: int, args: argparse.Namespace
) -> tuple[list[float], int, int]:
    """Best images/s of each pipeline over the rounds, timed steps per round, rounds."""
    # compilation, allocator, thread pools on the first; each other's own start-up
    for i, pipeline in enumerate(pipelines):
        timed_round(trainer, pipeline, 1, args.warmup - 1 if i == 0 else 0)
    one = timed_round(trainer, pipelines[1], 2, 0) / 2  # (b): the model's own step time
    steps = max(1, min(args.max_steps, round(args.round_s / one)))
    rounds = args.rounds if one <= args.round_s else min(args.rounds, 2)  # a slow network
    best = [0.0] * len(pipelines)
    for r in range(rounds):
        for i in [(r + k) % len(pipelines) for k in range(len(pipelines))]:
            seconds = timed_round(trainer, pipelines[i], steps, 1)
            best[i] = max(best[i], steps * batch / seconds)
    return best, steps, rounds


STAGES = ("batch", "augment", "forward", "loss", "backward", "optimizer")


def profile_stages(trainer: Trainer, pipelines: list[Pipeline], steps: int) -> list[str]:
    """One round of each pipeline under torch.profiler: host ms per step of each stage
    ("batch": the batch source, "augment" within it), then the whole step's wall time."""
    with profile(activities=[ProfilerActivity.CPU]):  # the profiler's own first-use costs
        timed_round(trainer, pipelines[1], 1, 0)
    lines = []
    for pipeline in pipelines:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            seconds = timed_round(trainer, pipeline, steps, 1)
        ms = {e.key: e.cpu_time_total / 1000 for e in prof.key_averages() if e.key in STAGES}
        per_step = "  ".join(f"{k} {ms[k] / (steps + 1):.1f}" for k in STAGES if k in ms)
        lines.append(f"  {pipeline.label}: {per_step}  | step {seconds * 1000 / steps:.1f}")
    return lines


def run(
    picked: Picked, config: Config, batch: int, device: torch.device, args: argparse.Namespace
) -> dict[str, Any]:
    policy = config.augment
    recipe = config.train.model_copy(update={"compile": args.compile, "batch_size": batch})
    data = synthetic(max(args.images, 4 * batch), torch.device("cpu")).to(device)
    trainer = make_trainer(picked.spec, recipe, data)
    pipelines: list[Pipeline] = [
        Ours(data, policy, batch, trainer),
        Ours(data, AUGMENT_OFF, batch, trainer),
        Torchvision(data, policy, batch, trainer, args.workers),
    ]
    try:
        (a, b, c), steps, rounds = bench_model(trainer, pipelines, batch, args)
        if args.profile:
            print(f"profile of {picked.name} at batch {batch}, host ms per step:", flush=True)
            print("\n".join(profile_stages(trainer, pipelines, steps)), flush=True)
    finally:
        pipelines.clear()  # the DataLoader's workers go with it
    loss = sync(trainer) / max(1, trainer.schedule.last_epoch)
    if not math.isfinite(loss):
        print(f"warning: {picked.name}: the loss became {loss}; its figures may not hold")
    row = {"model": picked.name, "batch": batch, "a": a, "b": b, "c": c, "steps": steps}
    return row | {"rounds": rounds, "macs": picked.macs, "params": picked.params}


def show(r: dict[str, Any]) -> str:
    return (
        f"{r['model']:<7}{r['macs'] / 1e6:>9.1f}{r['params'] / 1e6:>8.2f}{r['batch']:>6}"
        f"{r['steps']:>3}x{r['rounds']:<2}{r['a']:>10.0f}{r['b']:>10.0f}{r['c']:>12.0f}"
        f"{r['a'] / r['b']:>8.2f}{r['a'] / r['c']:>8.2f}"
    )


HEADER = (
    f"{'model':<7}{'MMACs':>9}{'Mparams':>8}{'batch':>6}{'steps':>6}{'(a) ours':>10}"
    f"{'(b) noaug':>10}{'(c) tvision':>12}{'a/b':>8}{'a/c':>8}"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="128", help="batch sizes, comma-separated")
    parser.add_argument("--models", default=",".join(NAMES), help="some of small,median,large")
    parser.add_argument("--candidates", type=int, default=200, help="random draws to pick from")
    parser.add_argument("--large-quantile", type=float, default=0.9, help="1.0: the maximum")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; the best counts")
    parser.add_argument("--round-s", type=float, default=2.0, help="target seconds per round")
    parser.add_argument("--max-steps", type=int, default=100, help="timed steps per round, at most")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per pipeline first")
    parser.add_argument("--images", type=int, default=2048, help="images in the synthetic set")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--profile", action="store_true", help="then profile one round of each")
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    if not names or set(names) - set(NAMES):
        parser.error(f"--models: some of {','.join(NAMES)}")
    batches = [int(b) for b in args.batches.split(",") if b]
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    device = torch.device(args.device)
    config = seed_config()
    began = time.monotonic()
    picked = pick_models(config, args.candidates, args.large_quantile)
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"cpus {os.cpu_count()}; picked from {args.candidates} random draws of the default "
        f"space in {time.monotonic() - began:.0f} s; best of up to {args.rounds} rounds",
        flush=True,
    )
    print(HEADER, flush=True)
    rows = []
    for p in picked:
        if p.name not in names:
            continue
        for batch in batches:
            rows.append(run(p, config, batch, device, args))
            print(show(rows[-1]), flush=True)
    print(f"images/s, best round; took {time.monotonic() - began:.0f} s in all")
    for r in rows:
        print(
            f"RESULT model={r['model']} aug_cost_ratio={r['a'] / r['b']:.2f} "
            f"vs_torchvision={r['a'] / r['c']:.2f} batch={r['batch']} ours_ips={r['a']:.0f} "
            f"noaug_ips={r['b']:.0f} torchvision_ips={r['c']:.0f} macs={r['macs']} "
            f"params={r['params']}"
        )


if __name__ == "__main__":
    main()

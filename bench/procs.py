"""Bench: the small network's aggregate train images/s with K worker processes on one device.

What SMS_WORKERS_PER_POD=K (job/run/pod.py) buys: K processes ("spawn": fresh interpreters,
as a pod's children are) each train the same network, "small" (bench/train.py's pick:
the fewest MACs among the default space's random draws, seed 0), with the product's
``job.ml.train.Trainer`` (its step and its batch: gather, the seed's augmentation
RandAugment N=2 M=15 with flip and Cutout, normalisation; bf16 autocast and
channels_last on CUDA) on synthetic uint8 data of CIFAR-10's shape, on one device. Each
process gets cores / K torch threads (as job.run.pod splits a pod's), builds and warms up
(``--warmup`` steps), then ``--rounds`` times waits for the others at a barrier, trains
for ``--seconds`` and reads its loss back (on CUDA: waits for the device). A process's
images/s in a round are its steps x batch over that time; a round's figure is the sum
over the K processes, which trained concurrently; K's figure is its best round (on a
shared machine, load only ever slows a round down).

    .venv/bin/python bench/procs.py [--device cpu|cuda] [--procs 1,2,4] [--batch 128]
        [--rounds 3] [--seconds 4] [--warmup 10] [--images 4096]

The last lines are one per K: ``RESULT procs=<K> batch=<B> ips=<best round's sum
over K> per_proc=<its mean> vs_one=<ips / ips at K=1> macs=… params=…``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train import pick_models, seed_config, sync, synthetic
from job.ml.model import build_model, model_spec_yaml, spec_from_yaml
from job.ml.train import Trainer

BARRIER_TIMEOUT_S = 600.0


def train_for(trainer: Trainer, seconds: float) -> tuple[int, float]:
    """Steps through the epoch's batches (wrapping) for `seconds`; (steps, elapsed s to
    the loss read back)."""
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        trainer.step(*trainer.batch(steps % trainer.steps))
        steps += 1
    sync(trainer)
    return steps, time.perf_counter() - start


def child(i: int, procs: int, spec_yaml: str, args: dict[str, Any], barrier: Any, out: Any) -> None:
    """One worker process: build, warm up, then each round: wait for the others, train;
    report its images/s of every round."""
    try:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // procs))
        device = torch.device(args["device"])
        config = seed_config()
        recipe = config.train.model_copy(update={"batch_size": args["batch"], "epochs": 10**6})
        data = synthetic(max(args["images"], 2 * args["batch"]), torch.device("cpu")).to(device)
        torch.manual_seed(i)
        model = build_model(spec_from_yaml(spec_yaml))
        trainer = Trainer(model, config.augment, recipe, data, device)
        trainer.start_epoch(1)
        trainer.model.train()
        for step in range(max(1, args["warmup"])):  # allocator, kernels, thread pools
            trainer.step(*trainer.batch(step % trainer.steps))
        sync(trainer)
        rounds = []
        for _ in range(args["rounds"]):
            barrier.wait(timeout=BARRIER_TIMEOUT_S)
            steps, seconds = train_for(trainer, args["seconds"])
            rounds.append(steps * args["batch"] / seconds)
        out.put(("done", rounds))
    except Exception:
        barrier.abort()  # the others stop waiting
        out.put(("error", f"process {i}: {traceback.format_exc()}"))


def run(procs: int, spec_yaml: str, args: dict[str, Any]) -> float:
    """K processes training concurrently: the best round's images/s, summed over them."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    workers = [
        ctx.Process(target=child, args=(i, procs, spec_yaml, args, barrier, out))
        for i in range(procs)
    ]
    for worker in workers:
        worker.start()
    try:
        results = [out.get(timeout=BARRIER_TIMEOUT_S + 60) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.terminate()
    errors = [payload for kind, payload in results if kind == "error"]
    if errors:
        raise RuntimeError(errors[0])
    per_round = zip(*(payload for _, payload in results), strict=True)
    return float(max(sum(ips) for ips in per_round))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--procs", default="1,2,4", help="worker process counts, comma-separated")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; the best counts")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per round")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per process first")
    parser.add_argument("--images", type=int, default=4096, help="images in the synthetic set")
    parser.add_argument("--candidates", type=int, default=200, help="random draws to pick from")
    args = parser.parse_args()
    counts = [int(k) for k in args.procs.split(",") if k]
    if not counts or min(counts) < 1:
        parser.error("--procs: counts >= 1, e.g. 1,2,4")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    began = time.monotonic()
    small = pick_models(seed_config(), args.candidates, 0.9)[0]
    options = vars(args) | {"procs": None}
    print(
        f"device {args.device}, cpus {os.cpu_count()}, torch {torch.__version__}; small "
        f"network {small.macs / 1e6:.1f} MMACs, {small.params:,} params; batch {args.batch}, "
        f"best of {args.rounds} rounds of {args.seconds:g} s",
        flush=True,
    )
    print(f"{'K':>3}{'images/s':>12}{'per process':>13}{'vs K=1':>8}", flush=True)
    rows = []
    for procs in counts:
        ips = run(procs, model_spec_yaml(small.spec), options)
        rows.append((procs, ips, ips / procs))
        vs_one = rows[-1][1] / rows[0][1] if rows[0][0] == 1 else float("nan")
        print(f"{procs:>3}{rows[-1][1]:>12.0f}{rows[-1][2]:>13.0f}{vs_one:>8.2f}", flush=True)
    took = time.monotonic() - began
    print(f"aggregate train images/s of K processes training at once; took {took:.0f} s")
    for procs, total, each in rows:
        vs_one = total / rows[0][1] if rows[0][0] == 1 else float("nan")
        print(
            f"RESULT procs={procs} batch={args.batch} ips={total:.0f} per_proc={each:.0f} "
            f"vs_one={vs_one:.2f} macs={small.macs} params={small.params}"
        )


if __name__ == "__main__":
    main()

"""Bench: after a data change, a warm-started new study version vs a cold start.

What re-search (issue 15, ``job.collect.research``) promises is that when the data changes, the
next study version starts from what the last one learnt (its picks and its Pareto front,
enqueued and trained again on the new data) and so reaches a good front sooner than a
search started from nothing. This measures that, at equal budget, with the product's
own parts: ``job.search.worker.Worker`` (real training on the CPU),
``job.collect.research.research``
(the decision and the warm start) and ``job.search.view``'s hypervolume (fixed normalisation,
so studies compare directly).

For each seed (``--seeds``, default 3; the seed is ``study.seed`` and picks which images
are replaced):

1. Data v1: an ImageFolder of scikit-learn's 8x8 digits, the first ``--per-class``
   (default 80) of each class, as grey PNGs in ``<tmp>/images/<class>/<row>.png``.
2. Version 1 (the parent) runs to its budget ``--budget`` (default 20) on v1 in a
   journal storage; its cost is sunk before the data changes and is not counted.
3. Data v2: half of each class's images deleted (a random half) and as many other
   digits of that class written: the data fingerprint changes, the task does not.
4. Warm: ``research(config, url, data_v2)`` decides ``new_version`` and creates
   ``<name>-v2`` beside the parent, its picks and front enqueued (at most half the
   budget); a Worker runs it to the budget. The enqueued trials count against it.
5. Cold: a fresh journal, the same config and seed, data v2, study ``<name>``, run to
   the budget.

Both see the same ``Dataset`` (v2 loaded once), so the same split and validation set.
The hypervolume after k COMPLETE trials (in completion order) is taken at k = 25%, 50%
and 100% of the budget. ``warm_to_cold_budget`` is the smallest k / budget at which the
warm version's hypervolume reaches the cold start's final one (k = budget); ">1" when it
never does within the budget (``inf`` in the RESULT line). It is taken on the mean
curves over the seeds (``warm_to_cold_budget``: what to expect) and per seed
(``warm_to_cold_budget_median_seed``, the median: how often). Goal: <= 0.5, the warm
version matching a full cold search with half the trials.

The search config (``--epochs``, default 2; image size 8; three blocks; TPE with
multivariate, grouped sampling as the product runs it; latency not measured; selection
``best`` and ``knee`` without verification) is written as YAML, as a user would.

    nice .venv/bin/python bench/research.py [--seeds 0,1,2] [--budget 20] [--epochs 2]
        [--per-class 80] [--keep DIR]

The last line is ``RESULT warm_to_cold_budget=<median over seeds> hv_warm_25=<mean> …
hv_cold_100=<mean> seeds=<n> budget=<B>``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from PIL import Image

from job.collect.research import NEW_VERSION, WARM_START, research
from job.config import Config, load_config
from job.ml.data import Dataset, load_data
from job.search.view import front_hypervolume, pareto_trials
from job.search.worker import Worker
from job.storage import JOURNAL, open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)

NAME = "digits"
FRACTIONS = (0.25, 0.5, 1.0)

CONFIG = """\
study: {{name: {name}, budget: {budget}, sampler: tpe, seed: {seed}}}
data: {{name: imagefolder, path: {path}, image_size: 8, val_ratio: 0.2, test_ratio: 0.2}}
augment: {{n_select: 1, level: 3, flip_p: 0.0, cutout_p: 0.0}}
space:
  blocks:
    - {{modules: [Conv, DWConv], repeat: [1, 2], channels: [8, 32, 8], kernel: [3]}}
    - modules: [Conv, DWConv, InvertedResidualv2, Pass]
      repeat: [1, 2]
      channels: [16, 48, 16]
      kernel: [1, 3]
      ir_channels: [8, 24, 8]
    - modules: [Conv, InvertedResidualv2, InvertedResidualv3, Pass]
      repeat: [1, 2]
      channels: [16, 64, 16]
      kernel: [1, 3]
      ir_channels: [16, 32, 8]
  head_channels: [32, 128, 32]
  augment: {{n_select: [0, 1], level: [0, 5], random_magnitude: [false]}}
train: {{epochs: {epochs}, batch_size: 32, lr: 0.05, device: cpu, measure_latency: false}}
objectives: [accuracy, params]
select: {{verify: false, policies: [best, knee]}}
"""


# ---- data -----------------------------------------------------------------------------


def digits_by_class() -> dict[int, list[np.ndarray]]:
    """scikit-learn's digits as 8x8 uint8 images, by class, in the dataset's order."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    pixels = (x.reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)
    return {label: [pixels[i] for i in np.flatnonzero(y == label)] for label in range(10)}


def write_image(folder: Path, row: int, pixels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").save(folder / f"{row}.png")


def write_v1(root: Path, digits: dict[int, list[np.ndarray]], per_class: int) -> None:
    """The first `per_class` digits of each class."""
    for label, images in digits.items():
        for row in range(per_class):
            write_image(root / str(label), row, images[row])


def change_to_v2(root: Path, digits: dict[int, list[np.ndarray]], per_class: int, seed: int) -> int:
    """Half of each class's images (a random half) deleted, as many unseen digits of that
    class written; returns how many images were replaced."""
    rng = np.random.default_rng(seed)
    half = per_class // 2
    for label, images in digits.items():
        folder = root / str(label)
        for row in rng.choice(per_class, size=half, replace=False):
            (folder / f"{row}.png").unlink()
        for row in range(per_class, per_class + half):
            write_image(folder, row, images[row])
    return half * len(digits)


# ---- studies --------------------------------------------------------------------------


def make_config(folder: Path, images: Path, args: argparse.Namespace, seed: int) -> Config:
    """The search config, written as YAML and loaded as `run` would."""
    path = folder / "research.yaml"
    text = CONFIG.format(name=NAME, budget=args.budget, seed=seed, path=images, epochs=args.epochs)
    path.write_text(text)
    return load_config(path)


def journal(folder: Path) -> str:
    """The embedded storage `run` uses for an output folder."""
    folder.mkdir(parents=True, exist_ok=True)
    return JOURNAL + str((folder / "study.journal").resolve())


def search(config: Config, url: str, data: Dataset, study: str | None = None) -> float:
    """A Worker runs `study` to the budget; the seconds it took."""
    start = time.perf_counter()
    Worker(config, url, study, log=lambda line: None).run(data)
    return time.perf_counter() - start


def completed(url: str, study: str, budget: int) -> list[FrozenTrial]:
    """The study's COMPLETE trials in completion order; exactly `budget` of them."""
    trials = optuna.load_study(study_name=study, storage=open_storage(url)).get_trials()
    done = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE),
        key=lambda t: (t.datetime_complete, t.number),
    )
    if len(done) != budget:
        states = [t.state.name for t in trials]
        raise RuntimeError(f"{study}: {len(done)} COMPLETE of {states}, want {budget}")
    return done


def hv_curve(trials: list[FrozenTrial], objectives: tuple[str, ...]) -> list[float]:
    """Hypervolume of the first k trials' front, k = 1 .. len(trials)."""
    return [
        front_hypervolume(pareto_trials(trials[:k], objectives), objectives)
        for k in range(1, len(trials) + 1)
    ]


def at(curve: list[float], fraction: float) -> float:
    """The curve after `fraction` of the budget (k rounded up, at least 1)."""
    return curve[max(1, math.ceil(fraction * len(curve))) - 1]


def reach(warm: list[float], target: float) -> float:
    """Smallest k / budget with warm(k) >= target; inf when it never does."""
    for k, value in enumerate(warm, start=1):
        if value >= target - 1e-12:
            return k / len(warm)
    return math.inf


def one_seed(
    seed: int, root: Path, digits: dict[int, list[np.ndarray]], args: argparse.Namespace
) -> dict[str, Any]:
    images = root / "images"
    write_v1(images, digits, args.per_class)
    config = make_config(root, images, args, seed)
    objectives = tuple(config.objectives)

    url = journal(root / "versions")
    data_v1 = load_data(config.data)
    parent_s = search(config, url, data_v1)
    parent_hv = hv_curve(completed(url, NAME, args.budget), objectives)[-1]

    replaced = change_to_v2(images, digits, args.per_class, seed)
    data_v2 = load_data(config.data)
    if data_v2.fingerprint == data_v1.fingerprint:
        raise RuntimeError("the data fingerprint did not change with the images")
    decision = research(config, url, data_v2)
    if decision.decision != NEW_VERSION or tuple(decision.changed) != ("data",):
        raise RuntimeError(f"research decided {decision}, want a new version (data changed)")
    warm_s = search(config, url, data_v2, decision.study)
    warm_trials = completed(url, decision.study, args.budget)

    cold_url = journal(root / "cold")
    cold_s = search(config, cold_url, data_v2)
    cold_trials = completed(cold_url, NAME, args.budget)

    warm, cold = hv_curve(warm_trials, objectives), hv_curve(cold_trials, objectives)
    return {
        "seed": seed,
        "replaced": replaced,
        "enqueued": decision.warm_start_trials,
        "warm_started": sum(WARM_START in t.user_attrs for t in warm_trials),
        "parent_hv": parent_hv,
        "warm": warm,
        "cold": cold,
        "reach": reach(warm, cold[-1]),
        "seconds": {"parent": parent_s, "warm": warm_s, "cold": cold_s},
        "best_acc": {
            "warm": max(t.values[0] for t in warm_trials),
            "cold": max(t.values[0] for t in cold_trials),
        },
    }


# ---- output ---------------------------------------------------------------------------


def fraction_text(value: float) -> str:
    return ">1" if math.isinf(value) else f"{value:.2f}"


def show_seed(r: dict[str, Any], budget: int) -> None:
    s = r["seconds"]
    print(
        f"seed {r['seed']}: {r['replaced']} images replaced; {r['enqueued']} warm-start trials "
        f"enqueued ({r['warm_started']} completed); parent hv on v1 {r['parent_hv']:.4f}; "
        f"seconds parent {s['parent']:.0f}, warm {s['warm']:.0f}, cold {s['cold']:.0f}"
    )
    head = "".join(f"{f'k={max(1, math.ceil(f * budget))}':>9}" for f in FRACTIONS)
    print(f"  {'':<6}{head}{'best acc':>10}")
    for side in ("warm", "cold"):
        cells = "".join(f"{at(r[side], f):>9.4f}" for f in FRACTIONS)
        print(f"  {side:<6}{cells}{r['best_acc'][side]:>10.3f}")
    print(f"  warm reaches cold's final hv at {fraction_text(r['reach'])} of the budget")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="study seeds, comma-separated")
    parser.add_argument("--budget", type=int, default=20, help="COMPLETE trials per version")
    parser.add_argument("--epochs", type=int, default=2, help="train epochs per trial")
    parser.add_argument("--per-class", type=int, default=80, help="images per class (v1, v2)")
    parser.add_argument("--keep", type=Path, help="keep the images and journals in DIR")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    digits = digits_by_class()
    fewest = min(len(images) for images in digits.values())
    if not seeds or args.budget < 4 or args.epochs < 1:
        parser.error("--seeds: at least one; --budget: >= 4; --epochs: >= 1")
    if not 2 <= args.per_class <= fewest * 2 // 3:
        parser.error(f"--per-class: 2 .. {fewest * 2 // 3} (v2 needs half as many unseen)")
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep: {args.keep} is not empty")

    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-research-") as tmp:
        base = args.keep or Path(tmp)
        for seed in seeds:
            row = one_seed(seed, base / f"seed{seed}", digits, args)
            show_seed(row, args.budget)
            rows.append(row)

    means = {
        (side, f): statistics.mean(at(r[side], f) for r in rows)
        for side in ("warm", "cold")
        for f in FRACTIONS
    }
    median = statistics.median(r["reach"] for r in rows)
    # The expected curves: the mean hypervolume after k trials over the seeds. One seed's
    # crossing point hangs on one lucky late network; the mean curve is what a user
    # should expect of a re-search.
    mean_warm = [statistics.mean(r["warm"][k] for r in rows) for k in range(args.budget)]
    mean_cold_final = statistics.mean(r["cold"][-1] for r in rows)
    expected = reach(mean_warm, mean_cold_final)
    print(f"mean over {len(rows)} seeds (budget {args.budget}, {args.epochs} epochs):")
    for side in ("warm", "cold"):
        cells = "".join(f"{means[side, f]:>9.4f}" for f in FRACTIONS)
        print(f"  {side:<6}{cells}")
    reaches = ", ".join(fraction_text(r["reach"]) for r in rows)
    print(f"warm_to_cold_budget per seed: {reaches}; median {fraction_text(median)}")
    print(f"warm_to_cold_budget of the mean curves: {fraction_text(expected)}")
    print(f"wall {time.perf_counter() - start:.0f} s")
    figures = " ".join(
        f"hv_{side}_{round(f * 100)}={means[side, f]:.4f}"
        for f in FRACTIONS
        for side in ("warm", "cold")
    )
    print(
        f"RESULT warm_to_cold_budget={expected:.2f} warm_to_cold_budget_median_seed={median:.2f} "
        f"{figures} seeds={len(rows)} budget={args.budget}"
    )


if __name__ == "__main__":
    main()

"""Bench: does the search's latency objective rank networks as they will run?

The latency objective (`train.latency`, job.ml.latency) is timed on each candidate before
training. This bench draws `--networks` candidates from a config's space (default the
quickstart's; random sampler, seeded), and times each one three ways, side by side:

* `ort`: onnxruntime on the CPU, fp32, batch 1, 1 thread, median of `--runs` runs after a
  warm-up. This is the search's default figure, `latency_ms_ort_fp32`.
* `ort again`: the same, timed a second time after all the others. This is what a
  deployer re-measures: the verified latency of an exported pick uses this runtime.
* `pytorch`: eager PyTorch at batch 1 on the CPU, the objective before issue 25
  (`latency_ms_torch`).

It prints Kendall's tau (with its p-value and n) between `ort` and `ort again` (does the
search's figure rank networks as a re-measurement does?), and between `pytorch` and
`ort again` (the old objective's agreement). The issue's goal is tau >= 0.8 for the
search's figure.

    .venv/bin/python bench/latency.py [--networks 40] [--runs 50] [--config F]

About 2 minutes on the 2-core dev machine. Ends with `RESULT ort_tau=<tau> pytorch_tau=<tau>
n=<networks>`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna
import torch

from job.collect.policies import rank_agreement
from job.config import Config, LatencyConfig, load_config
from job.ml.data import load_data
from job.ml.latency import measure
from job.ml.model import ModelSpec
from job.ml.train import TrainError
from job.search.space import sample_candidate

ROOT = Path(__file__).resolve().parents[1]


def networks(config: Config, count: int, seed: int) -> list[ModelSpec]:
    """`count` distinct networks the space can run on the config's data, drawn at random."""
    data = load_data(config.data)
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed)
    )
    found: list[ModelSpec] = []
    while len(found) < count:
        trial = study.ask()
        try:
            spec = sample_candidate(trial, data, config, timed=False).model
        except TrainError:  # a network the images cannot carry: the space rejects it too
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        study.tell(trial, [0.0, 0.0])
        if spec not in found:
            found.append(spec)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", type=int, default=40)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "quickstart.yaml")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)  # as one worker of `run` on this machine
    config = load_config(args.config, ["train.device=cpu"])
    data = load_data(config.data)
    ort = config.train.model_copy(update={"latency": LatencyConfig(runs=args.runs)})
    eager = ort.model_copy(update={"latency": LatencyConfig(runtime="pytorch")})
    specs = networks(config, args.networks, args.seed)
    first = [measure(spec, data, ort).ms for spec in specs]
    torch_ms = [measure(spec, data, eager).ms for spec in specs]
    again = [measure(spec, data, ort).ms for spec in specs]  # after all the others
    print(f"{'network':>7} {'ort ms':>8} {'again ms':>9} {'pytorch ms':>11}")
    for i, (a, b, c) in enumerate(zip(first, again, torch_ms, strict=True)):
        print(f"{i:>7} {a:>8.4f} {b:>9.4f} {c:>11.4f}")
    for name, found in (("ort", first), ("pytorch", torch_ms)):
        agreement = rank_agreement(found, again)
        print(
            f"{name} vs ort again: Kendall tau {agreement.kendall_tau:.3f} "
            f"(p {agreement.kendall_p:.2g}), Spearman rho {agreement.spearman_rho:.3f}, "
            f"n {agreement.n}"
        )
    ort_tau = rank_agreement(first, again).kendall_tau
    pytorch_tau = rank_agreement(torch_ms, again).kendall_tau
    print(f"RESULT ort_tau={ort_tau:.3f} pytorch_tau={pytorch_tau:.3f} n={len(specs)}")


if __name__ == "__main__":
    main()

"""Bench: search quality — random, TPE, NSGA-II and TPE + pruning at equal compute.

Does the search find better models per unit of compute than random sampling, and does
early stopping (``study.pruning``) get there sooner? Four arms, each run with
``--seeds`` study seeds (default 3), one search after the other, each one worker
(``job.search.worker.Worker``, the product's loop) on its own journal study:

* ``random``: ``study.sampler: random``;
* ``tpe``: ``study.sampler: tpe`` (multivariate, grouped: ``job.search.studies``);
* ``nsga2``: ``study.sampler: nsga2`` (Optuna's population of 50, as the product sets
  it: its first generation is drawn at random, so a search of fewer than 50 trials is
  the random arm of its seed, trial for trial);
* ``tpe+prune``: TPE with ``study.pruning`` on (``--min-epochs 2 --eta 3``): with
  ``--epochs 9`` a trial is judged after epochs 2 and 6. The first rung comes after the
  recipe's 1-epoch warm-up, as the product requires: a rung at its end (``min_epochs:
  1``, the product's default with no warm-up) judged networks still at chance here.

Equal compute: every search gets the same ``study.budget_epochs`` (``--budget-epochs``,
epochs trained by all its trials, of any state; ``study.budget`` is set out of reach),
so a search without pruning runs ``budget_epochs / epochs`` trials, one with pruning as
many more as its pruned trials saved epochs. Compute is counted in epochs, not seconds:
the machine is shared and a trial's wall time varies; the figures do not.

Hypervolume against compute: after each finished trial (trial order: one worker), the
epochs trained so far by every trial (``job.search.budget.trained_epochs``) and the
hypervolume of the COMPLETE, feasible trials so far (``job.search.view``:
``pareto_trials``, ``front_hypervolume``; losses normalised by fixed maps, reference
point 1: the figures the product's summary.json would give). A curve is a step
function of epochs; an arm's curve in the table and the plot is the median over its
seeds at each point of a common grid, its band the seeds' min and max.

The task: scikit-learn's digits (``data.name: digits``) at ``--size`` pixels, on the
config's space (default ``configs/quickstart.yaml``: 4 CPU-sized blocks, searched
augmentation; objectives accuracy and params), trained ``--epochs`` epochs on a
``--subset`` of training images: small and short enough that the space's validation
accuracies spread widely (printed: min, quartiles and max of the random arm's COMPLETE
trials). The splits: test (``data.test_ratio``), then validation (``--val-ratio``) cut
from the WHOLE remaining pool by the product's loader (``data.subset`` unset), then the
training subset drawn (stratified, seeded) from what is left. (``data.subset`` would
draw the subset first and cut validation out of it: a few dozen validation images.)

What the rungs alone save (``replay``): the random arm's own trials judged at the pruning
arm's rungs in trial order, with no new trial drawn (random search, seeded, draws the
same trials whether or not some are pruned): the share of its final hypervolume kept,
and the share of its compute spent.

Proxy fidelity: ``--retrain`` distinct COMPLETE trials, drawn at random (seeded) from
all the searches, are trained again from scratch at their full recipe with another seed
and scored on the test split, twice: "again", on the search's training subset; and
"verified", as the product's verification retrains (``job.search.retrain.retrain_data``:
the training subset and the validation split together). ``proxy_tau`` is Kendall's tau
between the proxy (the search's validation accuracy) and "again", with its p-value and
Spearman's rho (``job.collect.policies.rank_agreement``: verify.json's figures); the
same against "verified" is printed beside it.

    .venv/bin/python bench/quality.py [--quick] [--seeds 3] [--budget-epochs 360]
        [--epochs 9] [--subset 300] [--size 16] [--val-ratio 0.3] [--min-epochs 2] [--eta 3]
        [--retrain 24] [--arms random,tpe,nsga2,tpe+prune] [--out /tmp/sms-quality]
        [--threads N] [--config configs/quickstart.yaml]

About 20 minutes on the 2-core dev machine; ``--quick`` (2 seeds, a quarter of the
compute, 6 retrains; a smoke test: its 10 trials a search are all TPE's random
start-up) about 3. On a machine another busy process shares, pass
``--threads 1``: there torch's 2 threads made a search up to 10x slower (OpenMP threads
waiting on each other; 104 s against 10 s for the same 5 trials). Writes
``quality.png`` (hypervolume against epochs) and ``quality.json`` (every curve) under
``--out``. The last line is ``RESULT
tpe_vs_random_hv=<median over seeds of TPE's final HV / random's, seed by seed>
pruning_compute_ratio=<median over seeds of the epochs at which TPE + pruning first
reaches random's final HV of that seed, over random's epochs; inf: never>
proxy_tau=<Kendall's tau> n=<models retrained>``. Seed by seed: TPE draws its first 10
trials as the random sampler of the same seed does, and trial n trains with seed
``train.seed + n`` in every arm, so each seed's arms start alike.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from sklearn.model_selection import train_test_split

from job.collect.policies import RankAgreement, rank_agreement
from job.config import Config, TrainConfig, derive_seed, load_config
from job.ml.data import Dataset, Split, load_data
from job.ml.model import spec_from_yaml
from job.ml.train import train
from job.search import prune
from job.search.budget import trained_epochs
from job.search.record import TrialRecord
from job.search.retrain import policy_of, retrain_data
from job.search.view import front_hypervolume, pareto_trials
from job.search.worker import JOURNAL, Worker

ROOT = Path(__file__).resolve().parents[1]
# arm → (sampler, pruning on)
ARMS: dict[str, tuple[str, bool]] = {
    "random": ("random", False),
    "tpe": ("tpe", False),
    "nsga2": ("nsga2", False),
    "tpe+prune": ("tpe", True),
}
STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)  # the table's counts
GRID_POINTS = 10  # the table's compute columns: 10%, 20%, … of the budget
RETRAIN_SEED_OFFSET = 10_000  # a retrain's seed: the trial's, moved past every trial's
# the median lines, told apart where they coincide (random, TPE and NSGA-II start alike)
LINES: list[dict[str, Any]] = [
    {"linestyle": "-", "linewidth": 3.0},
    {"linestyle": "--", "linewidth": 2.0},
    {"linestyle": ":", "linewidth": 2.0},
    {"linestyle": "-", "linewidth": 1.5},
]
Curve = list[tuple[int, float]]  # (epochs trained so far, hypervolume), one per trial


@dataclass(frozen=True)
class Search:
    arm: str
    seed: int
    trials: list[FrozenTrial]  # in trial order
    curve: Curve
    seconds: float

    @property
    def final_hv(self) -> float:
        return self.curve[-1][1] if self.curve else 0.0

    @property
    def epochs(self) -> int:
        return self.curve[-1][0] if self.curve else 0

    def count(self, state: TrialState) -> int:
        return sum(t.state == state for t in self.trials)


# ---- the task -----------------------------------------------------------------------


def arm_config(args: argparse.Namespace, arm: str, seed: int) -> Config:
    """The config's space and recipe; the bench's data, compute budget, sampler, pruning."""
    sampler, pruning = ARMS[arm]
    overrides = [
        f"study.name=quality-{arm.replace('+', '-')}-s{seed}",
        "study.budget=100000",  # out of reach: the epochs are the budget
        f"study.budget_epochs={args.budget_epochs}",
        f"study.sampler={sampler}",
        f"study.seed={seed}",
        f"study.pruning.enabled={str(pruning).lower()}",
        f"study.pruning.min_epochs={args.min_epochs}",
        f"study.pruning.eta={args.eta}",
        "data.name=digits",
        f"data.image_size={args.size}",
        f"data.val_ratio={args.val_ratio}",
        "data.subset=null",  # the bench draws the subset after the validation cut
        f"train.epochs={args.epochs}",
        "train.warmup_epochs=1",
        "train.device=cpu",
        "train.measure_latency=false",  # not an objective here: time not worth spending
        "select.verify=false",
    ]
    return load_config(args.config, overrides)


def bench_data(config: Config, subset: int) -> tuple[Dataset, Dataset]:
    """(search, whole): the product's splits with no subset (test, then validation from
    the whole pool, the rest training), and the same with the training split cut to a
    stratified, seeded `subset`. The normalisation stays the whole pool's."""
    whole = load_data(config.data)
    index = np.arange(len(whole.train))
    labels = whole.train.y.numpy()
    kept, _ = train_test_split(
        index, train_size=subset, stratify=labels, random_state=config.data.seed
    )
    rows = torch.from_numpy(np.sort(kept))
    search = replace(whole, train=Split(whole.train.x[rows], whole.train.y[rows]))
    return search, whole


# ---- one search, its curve ----------------------------------------------------------


def run_search(config: Config, data: Dataset, folder: Path) -> tuple[list[FrozenTrial], float]:
    """One worker until `study.budget_epochs` is spent, on a fresh journal study."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    url = JOURNAL + str((folder / "study.journal").resolve())
    started = time.perf_counter()
    worker = Worker(config, url, log=lambda _: None)
    worker.run(data)
    trials = sorted(worker.study.get_trials(deepcopy=False), key=lambda t: t.number)
    return trials, time.perf_counter() - started


def hv_curve(trials: Sequence[FrozenTrial], objectives: Sequence[str]) -> Curve:
    """After each finished trial: (epochs trained by all trials so far, hypervolume of the
    COMPLETE feasible ones so far)."""
    curve: Curve = []
    epochs, done = 0, []
    for trial in trials:
        if not trial.state.is_finished():
            continue
        epochs += trained_epochs(trial)
        if trial.state == TrialState.COMPLETE:
            done.append(trial)
        curve.append((epochs, front_hypervolume(pareto_trials(done, objectives), objectives)))
    return curve


def replay(trials: Sequence[FrozenTrial], config: Config) -> Curve:
    """A search's COMPLETE trials judged at `config`'s rungs in trial order, as one worker
    would have judged them, with no new trials drawn in the epochs saved: `hv_curve` of
    what that pruning would have spent and kept. It parts the rung rule from the sampler
    (a pruned search draws other trials after its first pruning; random search, seeded,
    draws the same ones)."""
    objectives, rungs, eta = config.objectives, prune.rungs(config), config.study.pruning.eta
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    stopped: dict[int, int] = {}  # trial number -> the rung it stopped at
    curve: Curve = []
    for i, trial in enumerate(done):
        for epoch in rungs:
            reached = [t for t in done[: i + 1] if stopped.get(t.number, epoch) >= epoch]
            if not prune.goes_on(trial.number, prune.entrants(reached, epoch, config), eta):
                stopped[trial.number] = epoch
                break
        kept = [t for t in done[: i + 1] if t.number not in stopped]
        spent = sum(stopped.get(t.number, config.train.epochs) for t in done[: i + 1])
        curve.append((spent, front_hypervolume(pareto_trials(kept, objectives), objectives)))
    return curve


def hv_at(curve: Curve, epochs: float) -> float:
    """The curve's hypervolume once `epochs` were trained (a step function; 0 before)."""
    found = 0.0
    for spent, hv in curve:
        if spent > epochs:
            break
        found = hv
    return found


def first_reach(curve: Curve, target: float) -> float:
    """The epochs at which the curve first reaches `target`; inf if it never does."""
    return next((float(spent) for spent, hv in curve if hv >= target), math.inf)


# ---- figures over seeds -------------------------------------------------------------


def by_arm(searches: Sequence[Search]) -> dict[str, list[Search]]:
    """Each arm's searches, in seed order."""
    found = {arm: [s for s in searches if s.arm == arm] for arm in ARMS}
    return {arm: sorted(runs, key=lambda s: s.seed) for arm, runs in found.items()}


def paired(a: Sequence[Search], b: Sequence[Search]) -> list[tuple[Search, Search]]:
    """Searches of two arms with the same seed."""
    found = {s.seed: s for s in b}
    return [(s, found[s.seed]) for s in a if s.seed in found]


def compute_ratios(pruned: Sequence[Search], random: Sequence[Search]) -> list[float]:
    """Per seed: epochs at which TPE + pruning first reaches random's final HV, over the
    epochs random spent to get it."""
    return [first_reach(p.curve, r.final_hv) / r.epochs for p, r in paired(pruned, random)]


def hv_ratios(tpe: Sequence[Search], random: Sequence[Search]) -> list[float]:
    return [t.final_hv / r.final_hv if r.final_hv else math.inf for t, r in paired(tpe, random)]


def spread(values: Sequence[float]) -> str:
    """min / lower quartile / median / upper quartile / max."""
    q = np.quantile(np.asarray(values), [0, 0.25, 0.5, 0.75, 1])
    return " / ".join(f"{v:.3f}" for v in q)


def show_accuracies(searches: Sequence[Search]) -> None:
    """How widely the space's validation accuracies spread: the random arm's trials."""
    accs = [
        t.values[0] for s in searches if s.arm == "random" for t in s.trials if t.values is not None
    ]
    if accs:
        print(
            f"validation accuracy of the random arm's {len(accs)} COMPLETE trials "
            f"(min / q1 / median / q3 / max): {spread(accs)}"
        )


def show_learning_curves(trials: Sequence[FrozenTrial], epochs: int, whose: str) -> None:
    """How early a network's rank shows, which is what a rung judges: over `trials`'
    COMPLETE ones (trained to the end, never judged), the median validation accuracy
    after each epoch, and Kendall's tau between it and the final one."""
    curves = np.array(
        [
            [t.intermediate_values[e] for e in range(1, epochs + 1)]
            for t in trials
            if t.state == TrialState.COMPLETE and len(t.intermediate_values) >= epochs
        ]
    )  # (trials, epochs)
    if len(curves) < 2:
        return
    final = curves[:, -1].tolist()
    taus = [rank_agreement(curves[:, e].tolist(), final).kendall_tau for e in range(epochs)]
    print(f"\nlearning curves of {whose} {len(curves)} COMPLETE trials, by epoch:")
    print(f"{'epoch':<22}" + "".join(f"{e:>6}" for e in range(1, epochs + 1)))
    print(f"{'median val accuracy':<22}" + "".join(f"{v:>6.3f}" for v in np.median(curves, 0)))
    shown = ["  n/a" if tau is None else f"{tau:>6.2f}" for tau in taus]
    print(f"{'tau with the final':<22}" + "".join(shown))


def show_curves(arms: dict[str, list[Search]], budget: int) -> None:
    """Median HV over seeds at 10%, 20%, … of the compute budget, one row per arm."""
    grid = [budget * (i + 1) / GRID_POINTS for i in range(GRID_POINTS)]
    print(f"\nhypervolume (median over seeds) against epochs trained, of {budget}:")
    print(f"{'arm':<11}" + "".join(f"{e:>7.0f}" for e in grid))
    for arm, runs in arms.items():
        row = [statistics.median(hv_at(s.curve, e) for s in runs) for e in grid]
        print(f"{arm:<11}" + "".join(f"{v:>7.4f}" for v in row))


def show_finals(arms: dict[str, list[Search]]) -> None:
    """Each arm's final HV per seed, its range and median; trials and epochs spent."""
    print("\nfinal hypervolume per seed, range (min–max) and median; trials, epochs, wall:")
    header = f"{'arm':<11}{'per seed':<28}{'min–max':<17}{'median':>8}"
    print(header + f"{'complete':>9}{'pruned':>7}{'failed':>7}{'epochs':>8}{'wall s':>8}")
    for arm, runs in arms.items():
        finals = [s.final_hv for s in runs]
        seeds = " ".join(f"{v:.4f}" for v in finals)
        states = [sum(s.count(state) for s in runs) for state in STATES]
        print(
            f"{arm:<11}{seeds:<28}{min(finals):.4f}–{max(finals):.4f}   "
            f"{statistics.median(finals):>8.4f}{states[0]:>9}{states[1]:>7}{states[2]:>7}"
            f"{sum(s.epochs for s in runs):>8}{sum(s.seconds for s in runs):>8.0f}"
        )


def plot(arms: dict[str, list[Search]], budget: int, path: Path) -> None:
    """HV against epochs: each arm's median over seeds, its band the seeds' min–max."""
    grid = np.linspace(0, budget, 200)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (arm, runs), style in zip(arms.items(), LINES, strict=False):
        hv = np.array([[hv_at(s.curve, e) for e in grid] for s in runs])  # (seeds, points)
        (line,) = ax.step(grid, np.median(hv, axis=0), where="post", label=arm, **style)
        ax.fill_between(grid, hv.min(0), hv.max(0), step="post", alpha=0.15, color=line.get_color())
    ax.set_xlabel("epochs trained (all trials)")
    ax.set_ylabel("hypervolume (accuracy, params)")
    ax.set_title(f"search quality at equal compute: median and range of {len(runs)} seeds")
    lows = [hv_at(s.curve, budget / 4) for runs in arms.values() for s in runs]
    ax.set_ylim(bottom=max(0.0, min(lows) - 0.02))
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- proxy fidelity -----------------------------------------------------------------


def pick_models(searches: Sequence[Search], n: int, seed: int) -> list[FrozenTrial]:
    """`n` COMPLETE trials drawn at random from all searches, distinct candidates."""
    seen: dict[str, FrozenTrial] = {}
    for s in searches:
        for t in s.trials:
            record = TrialRecord.from_trial(t)
            if record.complete and record.model_yaml is not None:
                key = json.dumps([record.model_yaml, record.augment, record.recipe], sort_keys=True)
                seen.setdefault(key, t)
    pool = list(seen.values())
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[i] for i in order[:n]]


def retrained_accuracy(trial: FrozenTrial, data: Dataset) -> float:
    """The trial's network, augmentation and full recipe trained again from scratch on
    `data` with another seed; its test accuracy."""
    record = TrialRecord.from_trial(trial)
    assert record.model_yaml is not None and record.recipe is not None
    recipe = TrainConfig.model_validate(record.recipe)
    recipe = recipe.model_copy(update={"seed": derive_seed(recipe.seed, RETRAIN_SEED_OFFSET)})
    spec = spec_from_yaml(record.model_yaml)
    result = train(spec, policy_of(record.augment), recipe, data, test=True)
    assert result.test_accuracy is not None
    return result.test_accuracy


@dataclass(frozen=True)
class Fidelity:
    """Per model: proxy (the search's validation accuracy), test accuracy retrained on the
    search's training subset ("again"), and retrained as the product verifies
    ("verified": train + validation, `job.search.retrain.retrain_data`)."""

    proxy: list[float]
    again: list[float]
    verified: list[float]

    def agreement(self, retrained: Sequence[float]) -> RankAgreement:
        return rank_agreement(self.proxy, retrained)


def proxy_fidelity(searches: Sequence[Search], data: Dataset, n: int) -> Fidelity:
    """`n` models retrained twice each (`Fidelity`)."""
    found = Fidelity([], [], [])
    verify_data = retrain_data(data)
    for i, trial in enumerate(pick_models(searches, n, seed=0), start=1):
        assert trial.values is not None
        found.proxy.append(trial.values[0])
        found.again.append(retrained_accuracy(trial, data))
        found.verified.append(retrained_accuracy(trial, verify_data))
        print(
            f"  {i:>2}: trial {trial.number:>3} proxy {found.proxy[-1]:.3f}  "
            f"again {found.again[-1]:.3f}  verified {found.verified[-1]:.3f}",
            flush=True,
        )
    return found


def agreement_text(found: RankAgreement) -> str:
    if found.kendall_tau is None:
        return f"undefined (n {found.n})"
    return (
        f"Kendall tau {found.kendall_tau:.3f} (p {found.kendall_p:.2g}), Spearman rho "
        f"{found.spearman_rho:.3f} (p {found.spearman_p:.2g}), n {found.n}"
        + (" (too few to tell from chance)" if found.too_few else "")
    )


def show_fidelity(found: Fidelity) -> None:
    print(f"proxy vs again (proxy_tau): {agreement_text(found.agreement(found.again))}")
    print(f"proxy vs verified: {agreement_text(found.agreement(found.verified))}")
    for name, values in (("proxy", found.proxy), ("again", found.again)):
        print(f"  {name} accuracy (min / q1 / median / q3 / max): {spread(values)}")
    print(f"  verified accuracy (min / q1 / median / q3 / max): {spread(found.verified)}")


# ---- main ---------------------------------------------------------------------------


def verdicts(arms: dict[str, list[Search]], ratio: float) -> None:
    """The issue's two goals, met or not, in words."""
    tpe = [s.final_hv for s in arms["tpe"]]
    rnd = [s.final_hv for s in arms["random"]]
    apart = min(tpe) > max(rnd)
    print(
        f"goal TPE final HV >= random's, seed ranges apart: "
        f"{'met' if apart and statistics.median(tpe) >= statistics.median(rnd) else 'NOT met'} "
        f"(TPE {min(tpe):.4f}–{max(tpe):.4f}, random {min(rnd):.4f}–{max(rnd):.4f})"
    )
    print(
        f"goal pruning reaches random's final HV in <= 1/3 of its compute: "
        f"{'met' if ratio <= 1 / 3 else 'NOT met'} (median ratio {ratio:.3f})"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, 1/4 compute, 6 retrains")
    parser.add_argument("--seeds", type=int, default=3, help="study seeds per arm")
    parser.add_argument("--budget-epochs", type=int, default=360, help="compute per search")
    parser.add_argument("--epochs", type=int, default=9, help="epochs of a full trial")
    parser.add_argument("--min-epochs", type=int, default=2, help="pruning: the first rung")
    parser.add_argument("--eta", type=int, default=3, help="pruning: 1/eta go on at a rung")
    parser.add_argument("--subset", type=int, default=300, help="training images")
    parser.add_argument("--size", type=int, default=16, help="image side, pixels")
    parser.add_argument("--val-ratio", type=float, default=0.3, help="of the pool after test")
    parser.add_argument("--retrain", type=int, default=24, help="models for proxy_tau")
    parser.add_argument("--arms", default=",".join(ARMS), help="some of " + ",".join(ARMS))
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "quickstart.yaml")
    parser.add_argument("--out", type=Path, default=Path("/tmp/sms-quality"))
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.budget_epochs, args.retrain = 2, args.budget_epochs // 4, 6
    arms = [a for a in args.arms.split(",") if a]
    if set(arms) - set(ARMS) or not {"random", "tpe", "tpe+prune"} <= set(arms):
        parser.error(f"--arms: random, tpe and tpe+prune, and any of {','.join(ARMS)}")
    args.arms = arms
    return args


def run_searches(args: argparse.Namespace, data: Dataset) -> list[Search]:
    """Every arm with every seed, one search after the other."""
    searches = []
    for seed in range(args.seeds):
        for arm in args.arms:
            config = arm_config(args, arm, seed)
            trials, seconds = run_search(config, data, args.out / config.study.name)
            searches.append(Search(arm, seed, trials, hv_curve(trials, config.objectives), seconds))
            s = searches[-1]
            print(
                f"{arm:<10} seed {seed}: {len(trials)} trials, "
                f"{s.count(TrialState.PRUNED)} pruned, {s.epochs} epochs, "
                f"final HV {s.final_hv:.4f} ({seconds:.0f} s)",
                flush=True,
            )
    return searches


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    began = time.monotonic()
    data, whole = bench_data(arm_config(args, "random", 0), args.subset)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}; digits at "
        f"{args.size}x{args.size}: {len(data.train)} training images (of "
        f"{len(whole.train)}), {len(whole.val)} validation, {len(whole.test)} test; "
        f"{args.epochs} epochs a trial; {args.budget_epochs} epochs a search; "
        f"{args.seeds} seeds x {', '.join(args.arms)}",
        flush=True,
    )
    searches = run_searches(args, data)
    arms = {arm: runs for arm, runs in by_arm(searches).items() if runs}
    show_accuracies(searches)
    unjudged = [t for s in searches if s.arm == "random" for t in s.trials]
    show_learning_curves(unjudged, args.epochs, "the random arm's")
    show_curves(arms, args.budget_epochs)
    show_finals(arms)
    plot(arms, args.budget_epochs, args.out / "quality.png")

    print(f"\nretraining {args.retrain} COMPLETE trials, another seed, scored on the test split:")
    fidelity = proxy_fidelity(searches, data, args.retrain)
    show_fidelity(fidelity)
    proxy = fidelity.agreement(fidelity.again)

    hv_per_seed = hv_ratios(arms["tpe"], arms["random"])
    ratios = compute_ratios(arms["tpe+prune"], arms["random"])
    hv_ratio, compute_ratio = statistics.median(hv_per_seed), statistics.median(ratios)
    print("\nTPE / random final HV per seed:", " ".join(f"{r:.4f}" for r in hv_per_seed))
    shown = " ".join(f"{r:.3f}" for r in ratios)
    print("TPE + pruning's compute to random's final HV, per seed:", shown)
    verdicts(arms, compute_ratio)
    for s in arms["random"]:  # what the rungs alone save: module doc of `replay`
        spent, kept = replay(s.trials, arm_config(args, "tpe+prune", s.seed))[-1]
        print(
            f"random seed {s.seed} replayed through the rungs: {kept / s.final_hv:.3f} of its "
            f"final HV kept in {spent / s.epochs:.2f} of its compute"
        )
    record = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "curves": {f"{s.arm}/s{s.seed}": s.curve for s in searches},
        "retrains": vars(fidelity),
    }
    (args.out / "quality.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out / 'quality.png'}, quality.json; took {time.monotonic() - began:.0f} s")
    tau = "nan" if proxy.kendall_tau is None else f"{proxy.kendall_tau:.3f}"
    print(
        f"RESULT tpe_vs_random_hv={hv_ratio:.4f} pruning_compute_ratio={compute_ratio:.3f} "
        f"proxy_tau={tau} n={proxy.n}"
    )


if __name__ == "__main__":
    main()

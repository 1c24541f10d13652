"""Bench: does pruning pay on the quickstart? `make run`'s search with `study.pruning` off
(as shipped before: 40 COMPLETE trials of 10 epochs, 400 epochs) and on, at equal compute.

Each seed runs two searches of `configs/quickstart.yaml`, one worker each on its own
journal study (`job.search.worker.Worker`, the product's loop), search only (no collect):

* `off`: the quickstart as it was, `study.pruning` off, `study.budget: 40`;
* `on`: `study.pruning: {enabled: true, min_epochs: 2, eta: 3}` (rungs after epochs 2
  and 6 of 10: the quickstart warms up for 1, and a rung must come after the warm-up),
  `study.budget` out of reach and `study.budget_epochs` the epochs `off`
  trained (400), so both spend the same compute.

For each, the hypervolume after each finished trial against the epochs trained by then
(bench/quality.py's `hv_curve`: COMPLETE feasible trials, the product's normalisation).
Printed per seed: each arm's final hypervolume, the compute at which `on` first reaches
`off`'s final hypervolume, as a fraction of `off`'s, and the learning curves of `off`'s
trials (median validation accuracy per epoch, and Kendall's tau with the final one: how
early a rung could rank them); then their medians. With
`--set KEY=VALUE` the quickstart's shipped settings can be tried (e.g.
`--set study.budget_epochs=240`): that arm is then `shipped`.

    .venv/bin/python bench/pruning.py [--seeds 2] [--out /tmp/sms-pruning]

About 10 minutes per seed on the 2-core dev machine (two searches of 400 epochs). Ends
with `RESULT quickstart_hv_off=<median> quickstart_hv_on=<median>
quickstart_compute_ratio=<median fraction of off's compute at which on reaches off's
final HV; inf: never> seeds=<n>`.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import optuna
from optuna.trial import FrozenTrial, TrialState
from quality import first_reach, hv_curve, run_search, show_learning_curves

from job.config import Config, load_config
from job.ml.data import load_data
from job.search.worker import JOURNAL
from job.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def arm_config(arm: str, seed: int, epochs_off: int, extra: list[str]) -> Config:
    """The quickstart for one arm and seed (module doc); metrics and latency off: only
    epochs are counted here."""
    overrides = [
        f"study.name=pruning-{arm}-s{seed}",
        f"study.seed={seed}",
        "train.measure_latency=false",
        "select.verify=false",
    ]
    if arm == "off":
        overrides += ["study.pruning.enabled=false", "study.budget_epochs=null"]
    else:
        overrides += [
            "study.pruning.enabled=true",
            "study.pruning.min_epochs=2",
            "study.pruning.eta=3",
            "study.budget=100000",
            f"study.budget_epochs={epochs_off}",
        ]
    return load_config(QUICKSTART, overrides + (extra if arm == "on" else []))


def read_search(folder: Path) -> list[FrozenTrial]:
    """The trials of a search `run_search` left in `folder`, in trial order."""
    url = JOURNAL + str((folder / "study.journal").resolve())
    study = optuna.load_study(study_name=None, storage=open_storage(url))
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/sms-pruning"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--off-from", type=Path, help="an earlier --out: read its `off` searches, run none"
    )
    args = parser.parse_args()
    hv_off, hv_on, ratios = [], [], []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        off_config = arm_config("off", seed, 0, [])
        data = load_data(off_config.data)
        objectives = off_config.objectives
        if args.off_from is not None:  # the same searches: `off` has no random part left
            off = read_search(args.off_from / f"off-s{seed}")
        else:
            off, _ = run_search(off_config, data, args.out / f"off-s{seed}")
        curve_off = hv_curve(off, objectives)
        epochs_off, final_off = curve_off[-1]
        on_config = arm_config("on", seed, epochs_off, args.set)
        on, _ = run_search(on_config, data, args.out / f"on-s{seed}")
        curve_on = hv_curve(on, objectives)
        epochs_on, final_on = curve_on[-1]
        reach = first_reach(curve_on, final_off) / epochs_off
        hv_off.append(final_off)
        hv_on.append(final_on)
        ratios.append(reach)
        pruned = sum(t.state == TrialState.PRUNED for t in on)
        complete = sum(t.state == TrialState.COMPLETE for t in on)
        print(
            f"seed {seed}: off {len(off)} trials, {epochs_off} epochs, HV {final_off:.4f}; "
            f"on {complete} COMPLETE + {pruned} PRUNED, {epochs_on} epochs, "
            f"HV {final_on:.4f}; on reaches off's final HV at {reach:.2f} of its compute",
            flush=True,
        )
        show_learning_curves(off, off_config.train.epochs, f"seed {seed}'s `off` search's")
    ratio = statistics.median(ratios)
    shown = "inf" if math.isinf(ratio) else f"{ratio:.3f}"
    print(
        f"RESULT quickstart_hv_off={statistics.median(hv_off):.4f} "
        f"quickstart_hv_on={statistics.median(hv_on):.4f} "
        f"quickstart_compute_ratio={shown} seeds={args.seeds}"
    )


if __name__ == "__main__":
    main()

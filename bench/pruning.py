"""Bench: does pruning pay on the quickstart? `make run`'s search as shipped (`on`:
`study.pruning` on, 400 epochs) against the same search with pruning off (`off`: 40
COMPLETE trials of 10 epochs, 400 epochs, as shipped before), at equal compute.

Each seed runs two searches of `configs/quickstart.yaml`, one worker each on its own
journal study (`job.search.worker.Worker`, the product's loop), search only (no collect):

* `off`: `study.pruning` off, `study.budget: 40`, no `study.budget_epochs`;
* `on`: the quickstart as shipped, `study.pruning: {enabled: true, min_epochs: 2, eta: 3}`
  (rungs after epochs 2 and 6 of 10: the quickstart warms up for 1, and a rung must come
  after the warm-up), `study.budget: 40` and `study.budget_epochs` the epochs `off`
  trained (400), so both spend the same compute (the 40 COMPLETE trials are out of reach
  with pruning: about 24 complete).

For each, the hypervolume after each finished trial against the epochs trained by then
(bench/quality.py's `hv_curve`: COMPLETE feasible trials, the product's normalisation).
Printed per seed: each arm's final hypervolume, the compute at which `on` first reaches
`off`'s final hypervolume, as a fraction of `off`'s, and the learning curves of `off`'s
trials (median validation accuracy per epoch, and Kendall's tau with the final one: how
early a rung could rank them); then their medians. With `--set KEY=VALUE` other settings
of the `on` arm can be tried (e.g. `--set study.pruning.eta=2`).

    .venv/bin/python bench/pruning.py [--seeds 5] [--out /tmp/sms-pruning]

About 2 + 3 minutes per seed on an idle 2-core dev machine (two searches of 400 epochs).
Ends with `RESULT quickstart_hv_off=<median> quickstart_hv_on=<median>
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
from quality import first_reach, hv_curve, replay, run_search, show_learning_curves

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
        overrides += [f"study.budget_epochs={epochs_off}"]
    config = load_config(QUICKSTART, overrides + (extra if arm == "on" else []))
    if arm == "on" and not config.study.pruning.enabled:
        raise SystemExit("bench/pruning.py: the `on` arm needs study.pruning.enabled")
    return config


def read_search(folder: Path) -> list[FrozenTrial]:
    """The trials of a search `run_search` left in `folder`, in trial order."""
    url = JOURNAL + str((folder / "study.journal").resolve())
    study = optuna.load_study(study_name=None, storage=open_storage(url))
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
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
        kept_epochs, kept_hv = replay(off, on_config)[-1]
        print(
            f"seed {seed}: `off`'s trials replayed through `on`'s rungs: HV {kept_hv:.4f} of "
            f"{final_off:.4f} kept, in {kept_epochs / epochs_off:.2f} of its compute",
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

"""Bench: how the search scales with local worker processes on one PostgreSQL study.

W worker processes (``--workers``, default 1, 2, 4, 8) share one study of ``--budget``
trials (default 48) in PostgreSQL. Each runs the product's worker loop,
``job.search.worker.Worker.run``: ``claim_trial`` under our budget lock (stale-trial check,
count, ``ask``), ``sample_candidate`` (the config's sampler and space; the network is
built once to measure it), the user attrs every trial records, ``Heartbeat``, ``tell``,
polling while every open slot runs elsewhere. Only training is replaced, by a fixed
``--sleep`` (default 2 s) that returns made-up objective values, so the 2 cores of the
dev machine do not limit the figure: it measures our coordination, not the CPU. The
config is ``--config`` (default ``configs/quickstart.yaml``: TPE, 4 CPU-sized blocks;
its data replaced by a few random images, which the sleeping trainer never reads).

For each W: a fresh database; the parent creates the study; the W processes (spawned
once, reused from run to run) open it and say ready; the clock starts at "go" and stops
at the last trial's completion (``datetime_complete``; "exit" is when the last worker
returned). Ideal: ``budget * sleep / W``. Efficiency = ideal / measured (1.0: the only
cost is the sleep); trials/min set against the ideal ``60 * W / sleep``; "scaling" is
the 1-worker time over W times the W-worker time. Every run must end with exactly
``budget`` COMPLETE trials (checked).

PostgreSQL: ``--database-url`` or DATABASE_URL names a server whose role may CREATE
DATABASE; otherwise a throwaway server is started from the local binaries
(``job.testing.pgserver``, as the test suite does) and removed at the end.

    .venv/bin/python bench/scale.py [--workers 1,2,4,8] [--budget 48] [--sleep 2]
        [--config configs/quickstart.yaml] [--database-url URL]

The last line is ``RESULT workers=<max W> efficiency=<ideal/measured> …
cpu_ms_per_trial=<the workers' CPU per trial>``, then both figures for every W.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
import traceback
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna
import torch

from bench.pool import Pool, add_run_args, postgres_server, timed, worker_counts
from job.config import Config, load_config
from job.ml.data import Dataset, Split
from job.ml.train import TrainResult
from job.search import tasks as search
from job.search.studies import open_study
from job.search.tasks import TrialRun
from job.search.worker import Worker
from job.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def bench_config(path: Path, name: str, budget: int) -> Config:
    config = load_config(path)
    study = config.study.model_copy(update={"name": name, "budget": budget, "storage": None})
    return config.model_copy(update={"study": study})


def tiny_data(config: Config) -> Dataset:
    """A few random images at the config's size: the worker reads the class count only."""
    size = config.data.image_size
    x = torch.zeros(20, 3, size, size, dtype=torch.uint8)
    split = Split(x, torch.arange(20) % 10)
    classes = tuple(str(i) for i in range(10))
    return Dataset("bench", split, split, split, classes, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "-")


def sleeper(seconds: float) -> Any:
    """A stand-in for `job.ml.train.train` (model spec, augment config, train config, data,
    keyword options): sleeps, then reports made-up figures."""

    def train(spec: Any, augment: Any, recipe: Any, data: Dataset, **_: Any) -> TrainResult:
        time.sleep(seconds)
        acc = random.random()
        return TrainResult(acc, acc, acc, acc, 1, 1, 0.0, seconds, "sleep")

    return train


# ---- the worker side ------------------------------------------------------------------

# Where a worker's time goes, summed over a run: each phase is one call site of the loop.
PHASES = ("claim", "sample", "record", "train", "tell", "poll")
SUMS = dict.fromkeys(PHASES, 0.0)


def _instrument() -> None:
    """Time the worker loop's phases; once per process (the loop calls these by name)."""
    search.claim_trial = timed(SUMS, "claim", search.claim_trial)  # lock wait + stale + count + ask
    search.sample_candidate = timed(SUMS, "sample", search.sample_candidate)
    hold = getattr(search, "ParamHold", None)  # the sampled parameters' one write
    if hold is not None:
        hold.write = timed(SUMS, "sample", hold.write)
    TrialRun.record = timed(SUMS, "record", TrialRun.record)  # type: ignore[method-assign]
    Worker._tell = timed(SUMS, "tell", Worker._tell)  # type: ignore[method-assign]


def run_worker(task: dict[str, Any], index: int, go: Any, results: Any) -> dict[str, Any]:
    config = Config.model_validate(task["config"])
    train = timed(SUMS, "train", sleeper(task["sleep"]))
    worker = Worker(config, task["url"], worker_index=index, train_fn=train, log=lambda _: None)
    worker.stop.wait = timed(SUMS, "poll", worker.stop.wait)  # type: ignore[method-assign]
    data = tiny_data(config)
    results.put(("ready", index))
    go.get()
    SUMS.update(dict.fromkeys(PHASES, 0.0))
    cpu, start = time.process_time(), time.perf_counter()
    ran = worker.run(data)
    busy = time.perf_counter() - start
    return {
        "trials": ran,
        "end": time.time(),
        "busy": busy,
        "cpu": time.process_time() - cpu,
        "sums": dict(SUMS),
    }


def serve(index: int, tasks: Any, go: Any, results: Any) -> None:
    """A pooled worker process: one task per run, until it gets None."""
    _instrument()
    while (task := tasks.get()) is not None:
        try:
            results.put(("done", run_worker(task, index, go, results)))
        except BaseException:
            results.put(("error", f"worker {index}:\n{traceback.format_exc()}"))


# ---- the parent side ------------------------------------------------------------------


def last_complete(url: str, name: str, budget: int) -> float:
    """The last trial's completion (epoch seconds); exactly `budget` COMPLETE, or an error."""
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) != budget:
        states = [t.state.name for t in trials]
        raise RuntimeError(f"{name}: {len(done)} COMPLETE of {states}, want {budget}")
    return max(t.datetime_complete.timestamp() for t in done if t.datetime_complete)


def measure(pool: Pool, server: Any, args: argparse.Namespace, workers: int) -> dict[str, Any]:
    name = f"bench-scale-w{workers}"
    config = bench_config(args.config, name, args.budget)
    url = server.new_database()
    open_study(config, url)  # the parent creates the schema and the study
    task = {"url": url, "config": config.model_dump(mode="json"), "sleep": args.sleep}
    start, outs = pool.run(task, workers)
    wall = last_complete(url, name, args.budget) - start
    ideal = args.budget * args.sleep / workers
    return {
        "workers": workers,
        "wall": wall,
        "exit": max(out["end"] for out in outs) - start,
        "ideal": ideal,
        "per_min": args.budget * 60 / wall,
        "ideal_per_min": 60 * workers / args.sleep,
        "efficiency": ideal / wall,
        "load": os.getloadavg()[0],
        "overhead": (wall * workers / args.budget - args.sleep) * 1000,
        "cpu": sum(out["cpu"] for out in outs) * 1000 / args.budget,
        **{p: sum(out["sums"][p] for out in outs) * 1000 / args.budget for p in PHASES},
        "rest": sum(out["busy"] - sum(out["sums"].values()) for out in outs) * 1000 / args.budget,
    }


HEADER = (
    f"{'W':>3}{'wall s':>8}{'exit s':>8}{'ideal s':>8}{'trials/min':>11}{'ideal/min':>10}"
    f"{'efficiency':>11}{'scaling':>9}{'ms/trial':>10}{'cpu ms':>8}{'load':>6} |"
    + "".join(f"{p:>8}" for p in (*PHASES, "rest"))
)


def show(r: dict[str, Any]) -> str:
    return (
        f"{r['workers']:>3}{r['wall']:>8.1f}{r['exit']:>8.1f}{r['ideal']:>8.1f}"
        f"{r['per_min']:>11.1f}{r['ideal_per_min']:>10.1f}{r['efficiency']:>11.3f}"
        f"{r['scaling']:>9.3f}{r['overhead']:>10.0f}{r['cpu']:>8.0f}{r['load']:>6.1f} |"
        + "".join(f"{r[p]:>8.0f}" for p in (*PHASES, "rest"))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=int, default=48, help="COMPLETE trials per study")
    parser.add_argument("--sleep", type=float, default=2.0, help="seconds per trial's training")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "quickstart.yaml")
    add_run_args(parser, workers="1,2,4,8")
    args = parser.parse_args()
    counts = worker_counts(parser, args)

    began = time.monotonic()
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        server = postgres_server(stack, args.database_url)
        if server is None:
            sys.exit("no PostgreSQL: set DATABASE_URL or install the server binaries")
        pool = Pool(max(counts), serve)
        stack.callback(pool.close)
        print(
            f"budget {args.budget} trials of {args.sleep:g} s sleep, config {args.config.name}, "
            f"workers {counts}, cpus {os.cpu_count()}, optuna {optuna.__version__}",
            flush=True,
        )
        print(HEADER, flush=True)
        for workers in counts:
            rows.append(measure(pool, server, args, workers))
            one = rows[0] if rows[0]["workers"] == 1 else None  # scaling needs a 1-worker run
            rows[-1]["scaling"] = one["wall"] / (rows[-1]["wall"] * workers) if one else math.nan
            print(show(rows[-1]), flush=True)
    print(
        "ms/trial: measured worker-seconds per trial minus the sleep (the loop's own cost); "
        "cpu ms: the workers' CPU per trial (their process CPU time over the run / budget); "
        "load: the 1-minute load average at the run's end (the machine is shared); then "
        "where a worker's time goes, ms per trial: "
        "claim (budget lock, stale check, count, ask; polls included), sample (sampler, "
        "measuring the network, writing the parameters), record (user attrs), train (the "
        "sleep), tell, poll (waiting "
        "while every open slot runs elsewhere), rest (heartbeat, the loop); "
        f"took {time.monotonic() - began:.0f} s in all"
    )
    last = rows[-1]
    print(
        f"RESULT workers={last['workers']} efficiency={last['efficiency']:.3f} "
        f"trials_per_min={last['per_min']:.1f} scaling={last['scaling']:.3f} "
        f"cpu_ms_per_trial={last['cpu']:.0f} "
        + " ".join(f"efficiency_w{r['workers']}={r['efficiency']:.3f}" for r in rows)
        + " "
        + " ".join(f"cpu_ms_w{r['workers']}={r['cpu']:.0f}" for r in rows)
    )


if __name__ == "__main__":
    main()

"""Bench: coordination overhead per trial, PostgreSQL vs the embedded journal file.

N worker processes share one 2-objective study of ``--trials`` trials and run the real
worker protocol around a trivial objective: ``job.search.tasks.claim_trial`` (our budget lock,
stale-trial check, count, the trial's row), ``job.storage.Heartbeat`` around the
objective (one ``suggest_float`` and one ``suggest_categorical``, no sleep), then
``study.tell``, until the claim says "done". Storages: the embedded journal file
(``journal:///tmp/…/study.journal``, a fresh temporary folder per run) and PostgreSQL (a
fresh database per run); worker counts from ``--workers``. Each run reports:

* the study's throughput: trials / wall time, from the moment all workers have opened
  the study until the last one is done (process start-up and imports are not timed);
* the cost of one trial as one worker sees it: the mean time of claim + heartbeat +
  objective + tell, measured inside the workers (trial-weighted over all workers), split
  into our lock (waiting for it, taking it, letting it go), the stale-trial check, the
  count (``count_states``), ``ask`` (``take_trial``; the rest of an ask, outside the lock,
  counts as lock), the heartbeat, the objective (suggests) and ``tell``.
  Polls while every open slot is still running elsewhere ("wait") are not counted there;
  "cpu" is the workers' own CPU time per trial (process time, heartbeat threads included),
  so ms/trial minus cpu is time spent waiting: on the lock, the database, the CPU;
  "max" is the slowest single trial (claim to tell) of any worker, in ms.

For the sampler's own share, the same ask + suggest runs in this process on an
in-memory study of the same size (no storage to speak of, no lock).

Workers are separate processes started once with multiprocessing's "spawn" context
(fresh interpreters, as real workers are) and reused from run to run; a run uses the
first W of them. PostgreSQL: ``--database-url`` or DATABASE_URL names a server whose
role may CREATE DATABASE (its databases are left behind); otherwise a throwaway server
is started from the local PostgreSQL binaries (``job.testing.pgserver``) and removed at the
end; with neither, the PostgreSQL rows are skipped (``na`` in the RESULT line).

    .venv/bin/python bench/storage.py [--trials 1000] [--workers 1,4,16]
        [--database-url URL] [--sampler random|tpe] [--markdown]

The last line is ``RESULT journal_w1_ms=… … postgres_w16_ms=… inmemory_ms=…``: ms per
trial as one worker sees it for each storage and worker count, and the in-memory
ask + suggest.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import optuna

from bench.pool import Pool, add_run_args, postgres_server, timed, worker_counts
from job.config import Config, parse_config
from job.search import tasks as search
from job.search.space import directions
from job.search.studies import make_sampler, open_study
from job.search.tasks import claim_trial
from job.storage import JOURNAL, Heartbeat, open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)

PHASES = ("lock", "stale", "count", "ask", "heartbeat", "objective", "tell")
CHOICES = ("a", "b", "c")
WAIT_S = 0.005  # poll interval while every open slot is running elsewhere


def bench_config(name: str, trials: int, sampler: str) -> Config:
    study = {
        "name": name,
        "budget": trials,
        "sampler": sampler,
        "heartbeat_interval_s": 1,
        "grace_period_s": 30,
    }
    return parse_config({"study": study, "objectives": ["accuracy", "params"]})


def objective(trial: optuna.Trial) -> list[float]:
    x = trial.suggest_float("x", 0.0, 1.0)
    c = trial.suggest_categorical("c", CHOICES)
    return [x, (1.0 - x) * (1 + CHOICES.index(c))]


# ---- the worker side ------------------------------------------------------------------


def run_worker(task: dict[str, Any], go: Any, results: Any) -> dict[str, Any]:
    """One worker's share of one run: open the study, say ready, wait for go, loop."""
    config = Config.model_validate(task["config"])
    url, budget = task["url"], config.study.budget
    study = open_study(config, url, worker_index=task["index"])
    sums = dict.fromkeys(PHASES, 0.0)
    inner = dict.fromkeys(PHASES, 0.0)  # parts of claim_trial, timed from inside it
    # claim_trial calls these by job.search.tasks's names; wrapping them splits its time
    search.take_trial = timed(inner, "ask", task["take_trial"])
    search.count_states = timed(inner, "count", task["count_states"])
    search.fail_stale_trials = timed(inner, "stale", task["fail_stale"])
    search.has_stale_trials = timed(inner, "stale", task["has_stale"])
    results.put(("ready", task["index"]))
    go.get()
    trials = waits = 0
    slowest = 0.0
    cpu = time.process_time()  # this process's CPU (all its threads), to set against wall
    while True:
        before = dict(inner)
        t0 = time.perf_counter()
        claimed = claim_trial(study, budget, url)
        t1 = time.perf_counter()
        if claimed == "done":
            break
        if claimed == "wait":
            waits += 1
            time.sleep(WAIT_S)
            continue
        assert isinstance(claimed, optuna.Trial)
        for phase in ("stale", "count", "ask"):
            sums[phase] += inner[phase] - before[phase]
        sums["lock"] += (t1 - t0) - sum(inner[p] - before[p] for p in ("stale", "count", "ask"))
        with Heartbeat(study, claimed):
            t2 = time.perf_counter()
            values = objective(claimed)
        t3 = time.perf_counter()
        study.tell(claimed, values)
        t4 = time.perf_counter()
        sums["heartbeat"] += t2 - t1
        sums["objective"] += t3 - t2
        sums["tell"] += t4 - t3
        slowest = max(slowest, t4 - t0)
        trials += 1
    end, cpu = time.time(), time.process_time() - cpu  # end: against Pool.run's go time
    return {"trials": trials, "sums": sums, "waits": waits, "cpu": cpu, "max": slowest, "end": end}


def serve(index: int, tasks: Any, go: Any, results: Any) -> None:
    """A pooled worker process: one task per run, until it gets None."""
    # claim_trial's parts, unwrapped: each run wraps them afresh (run_worker)
    parts: dict[str, Any] = {
        "fail_stale": search.fail_stale_trials, "has_stale": search.has_stale_trials,
        "count_states": search.count_states, "take_trial": search.take_trial,
    }  # fmt: skip
    while (task := tasks.get()) is not None:
        try:
            task = {**task, "index": index, **parts}
            results.put(("done", run_worker(task, go, results)))
        except BaseException:
            results.put(("error", f"worker {index}:\n{traceback.format_exc()}"))
        finally:
            search.fail_stale_trials = parts["fail_stale"]
            search.has_stale_trials = parts["has_stale"]
            search.count_states = parts["count_states"]
            search.take_trial = parts["take_trial"]


# ---- the parent side ------------------------------------------------------------------


def check_budget(url: str, name: str, trials: int) -> int:
    """COMPLETE trials in the finished study; anything but exactly the budget is an error."""
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    states = [t.state for t in study.get_trials(deepcopy=False)]
    complete = states.count(optuna.trial.TrialState.COMPLETE)
    if complete != trials or len(states) != trials:
        raise RuntimeError(f"{name}: {complete} COMPLETE of {len(states)} trials, want {trials}")
    return complete


def in_memory(trials: int, sampler: str) -> dict[str, float]:
    """ask + suggest (the sampler's share) and tell on an in-memory study, ms per trial."""
    config = bench_config("bench-inmemory", trials, sampler)
    study = optuna.create_study(
        storage=optuna.storages.InMemoryStorage(),
        sampler=make_sampler(config),
        directions=[optuna.study.StudyDirection[d.upper()] for d in directions(config.objectives)],
    )
    ask_s = tell_s = 0.0
    for _ in range(trials):
        t0 = time.perf_counter()
        trial = study.ask()
        values = objective(trial)
        t1 = time.perf_counter()
        study.tell(trial, values)
        ask_s += t1 - t0
        tell_s += time.perf_counter() - t1
    return {"ask_suggest": ask_s * 1000 / trials, "tell": tell_s * 1000 / trials}


def row(
    kind: str, workers: int, trials: int, wall: float, outs: list[dict[str, Any]]
) -> dict[str, Any]:
    done = sum(out["trials"] for out in outs)
    phases = {p: sum(out["sums"][p] for out in outs) * 1000 / done for p in PHASES}
    return {
        "storage": kind,
        "workers": workers,
        "trials": trials,
        "wall_s": wall,
        "trials_per_s": trials / wall,
        "ms": sum(phases.values()),
        **phases,
        "cpu": sum(out["cpu"] for out in outs) * 1000 / done,
        "max": max(out["max"] for out in outs) * 1000,
        "waits": sum(out["waits"] for out in outs),
    }


HEADER = (
    f"{'storage':<9}{'W':>3}{'wall s':>8}{'trials/s':>9}{'ms/trial':>9} |"
    + "".join(f"{p:>10}" for p in PHASES)
    + f" |{'cpu':>8}{'max':>8}{'waits':>7}"
)


def show(r: dict[str, Any]) -> str:
    return (
        f"{r['storage']:<9}{r['workers']:>3}{r['wall_s']:>8.1f}{r['trials_per_s']:>9.1f}"
        f"{r['ms']:>9.2f} |"
        + "".join(f"{r[p]:>10.2f}" for p in PHASES)
        + f" |{r['cpu']:>8.2f}{r['max']:>8.0f}{r['waits']:>7}"
    )


def markdown(rows: list[dict[str, Any]]) -> str:
    head = "| storage | W | wall s | trials/s | ms/trial/worker | " + " | ".join(PHASES)
    lines = [head + " | worker CPU | slowest |", "|" + "---|" * (7 + len(PHASES))]
    for r in rows:
        cells = [r["storage"], str(r["workers"]), f"{r['wall_s']:.1f}", f"{r['trials_per_s']:.1f}"]
        cells += (
            [f"**{r['ms']:.2f}**"]
            + [f"{r[p]:.2f}" for p in PHASES]
            + [f"{r['cpu']:.2f}", f"{r['max']:.0f}"]
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000, help="trials per study (the budget)")
    add_run_args(parser, workers="1,4,16")
    parser.add_argument("--sampler", choices=("random", "tpe"), default="random")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args()
    counts = worker_counts(parser, args)

    began = time.monotonic()
    rows: list[dict[str, Any]] = []
    result: dict[str, str] = {}
    with ExitStack() as stack:
        folder = Path(tempfile.mkdtemp(prefix="sms-bench-storage-"))
        stack.callback(shutil.rmtree, folder, ignore_errors=True)
        server = postgres_server(stack, args.database_url)
        pool = Pool(max(counts), serve)
        stack.callback(pool.close)
        print(
            f"{args.trials} trials, sampler {args.sampler}, workers {counts}, "
            f"cpus {os.cpu_count()}, optuna {optuna.__version__}",
            flush=True,
        )
        if server is None:
            print("no PostgreSQL: set DATABASE_URL or install the server binaries", flush=True)
        print(HEADER, flush=True)
        for kind in ("journal", "postgres"):
            for workers in counts:
                key = f"{kind}_w{workers}_ms"
                if kind == "postgres" and server is None:
                    result[key] = "na"
                    continue
                name = f"bench-{kind}-w{workers}"
                if kind == "journal":
                    url = JOURNAL + str(folder / name / "study.journal")
                else:
                    url = server.new_database()
                config = bench_config(name, args.trials, args.sampler)
                open_study(config, url)  # the parent creates the study (and the schema)
                task = {"url": url, "config": config.model_dump(mode="json")}
                start, outs = pool.run(task, workers)
                wall = max(out["end"] for out in outs) - start
                check_budget(url, name, args.trials)
                rows.append(row(kind, workers, args.trials, wall, outs))
                print(show(rows[-1]), flush=True)
                result[key] = f"{rows[-1]['ms']:.2f}"
    memory = in_memory(args.trials, args.sampler)
    print(
        f"in-memory, one process: ask + suggest {memory['ask_suggest']:.3f} ms/trial, "
        f"tell {memory['tell']:.3f} ms/trial"
    )
    print(f"phases are ms per trial per worker; took {time.monotonic() - began:.0f} s in all")
    if args.markdown:
        print(markdown(rows))
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()), end=" ")
    print(f"inmemory_ms={memory['ask_suggest']:.3f}")


if __name__ == "__main__":
    main()

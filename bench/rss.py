"""Bench: resident memory of the light roles (study exporter, dashboard), this tree vs a
baseline tree.

Issue 24, point 5: torch is imported only where a network is built, trained or
exported, so the `exporter` and `dashboard` containers should hold far less memory than
when every verb imported torch (the baseline, e.g. commit 3d69e3a). For each role and
each source tree (the baseline first, then this checkout, taking turns in each repeat)
the role runs as a subprocess of the same interpreter (`python -m job <role>`) with its
working directory at that tree, so `job` is imported from there:

    exporter:  python -m job exporter  --config configs/quickstart.yaml --out DIR --port P
    dashboard: python -m job dashboard --config configs/quickstart.yaml --out DIR --port P

DIR holds a small study made beforehand with plain Optuna, the embedded journal the
product expects there (`DIR/study.journal`, `job.storage.resolve_storage`; study
`quickstart`, objectives accuracy (max) and params (min), as configs/quickstart.yaml
says): ``--trials`` COMPLETE trials with two params and two values. P is a free port
(bound to 0 and released just before the start). Once the role answers HTTP, it is
scraped once (exporter: GET /metrics, which must name `sms_study_trials`; dashboard:
GET / and GET /api/studies, which must name the study), then VmRSS and VmHWM are read
from /proc/PID/status, whether torch is loaded from /proc/PID/maps (a mapped
libtorch*.so), and the role is stopped with SIGTERM. Each figure is the median of
``--repeat`` runs; "ready" is seconds from the start to the first HTTP answer (imports,
opening the storage). The environment is cleared of OPTUNA_STORAGE, POSTGRES_* and SMS_*
so both trees read the same journal. Linux only (/proc).

The baseline tree: ``--baseline PATH`` (a checkout, e.g. from ``git worktree add
--detach /tmp/sms-before 3d69e3a``), or ``--baseline-rev REV``, which makes such a
worktree in a temporary folder and removes it at the end (``git worktree remove
--force``).

    .venv/bin/python bench/rss.py (--baseline PATH | --baseline-rev REV)
        [--roles exporter,dashboard] [--repeat 3] [--trials 40] [--python PATH]

Prints one line per role and tree, then one per role:
``RESULT role=<r> rss_mib_before=… rss_mib_after=… ratio=<after / before>
hwm_mib_before=… hwm_mib_after=… torch_before=<yes|no> torch_after=<yes|no>
ready_s_before=… ready_s_after=…``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/quickstart.yaml"  # relative: each tree reads its own copy
STUDY = "quickstart"  # study.name in configs/quickstart.yaml
JOURNAL_FILE = "study.journal"  # job.storage.DEFAULT_JOURNAL, in both trees
ROLES = ("exporter", "dashboard")
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
MIB = 1024 * 1024


def make_study(out: Path, trials: int) -> None:
    """A small finished study in `out`'s journal, written by plain Optuna."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    out.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(out / JOURNAL_FILE)))
    study = optuna.create_study(
        study_name=STUDY,
        storage=storage,
        directions=["maximize", "minimize"],
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    for _ in range(trials):
        trial = study.ask()
        width = trial.suggest_int("width", 8, 128, step=8)
        depth = trial.suggest_int("depth", 1, 4)
        accuracy = 1.0 - 1.0 / (1.0 + 0.02 * width * depth)
        study.tell(trial, [accuracy, float(width * width * depth * 9)])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # localhost only
        return bytes(response.read())


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid`, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024  # kB
    return found


def torch_loaded(pid: int) -> bool:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return any("libtorch" in line for line in maps.splitlines())


def role_command(python: str, role: str, out: Path, port: int) -> list[str]:
    return [python, "-m", "job", role, "--config", CONFIG, "--out", str(out),
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip


def clean_env(tree: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "OPTUNA_STORAGE" and not key.startswith(("POSTGRES_", "SMS_", "DASHBOARD_"))
    }
    env["PYTHONPATH"] = str(tree)  # `job` from this tree, whatever else is on the path
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def scrape(role: str, base: str) -> None:
    """One scrape as its client makes it; raises unless the answer shows the study."""
    if role == "exporter":
        text = get(base + "/metrics").decode()
        if "sms_study_trials{" not in text:
            raise RuntimeError(f"exporter: no sms_study_trials in /metrics:\n{text[:2000]}")
    else:
        get(base + "/")
        text = get(base + "/api/studies").decode()
        if STUDY not in text:
            raise RuntimeError(f"dashboard: study {STUDY} not in /api/studies: {text[:2000]}")


def wait_until_serving(proc: subprocess.Popen[bytes], url: str, what: str) -> float:
    """Seconds from now until `url` answers; raises if the process exits or times out."""
    start = time.perf_counter()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode} before serving")
        try:
            get(url, timeout=2.0)
            return time.perf_counter() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.perf_counter() - start > READY_TIMEOUT_S:
                raise RuntimeError(f"{what}: no answer in {READY_TIMEOUT_S}s") from None
            time.sleep(0.05)


def measure(python: str, tree: Path, role: str, out: Path) -> dict[str, Any]:
    """Start `role` from `tree`, wait until it answers, scrape once, read its memory, stop."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            role_command(python, role, out, port),
            cwd=tree, env=clean_env(tree), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            ready = wait_until_serving(
                proc, base + ("/metrics" if role == "exporter" else "/"), f"{role} in {tree}"
            )
            scrape(role, base)
            memory = proc_status(proc.pid)
            torch = torch_loaded(proc.pid)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=STOP_TIMEOUT_S)
            if code != 0:
                raise RuntimeError(f"{role} in {tree} exited {code} on SIGTERM")
        except Exception:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
            raise
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"rss": memory["VmRSS"], "hwm": memory["VmHWM"], "torch": torch, "ready": ready}


def job_origin(python: str, tree: Path) -> str:
    """Where `python -m job` run in `tree` imports `job` from (a check of the setup)."""
    code = "import job, os; print(os.path.dirname(job.__file__))"
    done = subprocess.run(
        [python, "-c", code], cwd=tree, env=clean_env(tree),
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def add_worktree(rev: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="sms-rss-baseline-")) / "tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return path


def remove_worktree(path: Path) -> None:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
        check=False, capture_output=True,
    )  # fmt: skip
    shutil.rmtree(path.parent, ignore_errors=True)


def median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(run[key] for run in runs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--baseline", type=Path, help="a checkout of the baseline tree")
    which.add_argument("--baseline-rev", help="make a git worktree of REV as the baseline")
    parser.add_argument("--roles", default=",".join(ROLES))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--trials", type=int, default=40, help="COMPLETE trials in the study")
    parser.add_argument("--python", default=sys.executable, help="interpreter for both trees")
    args = parser.parse_args()
    roles = [r for r in args.roles.split(",") if r]
    if unknown := set(roles) - set(ROLES):
        parser.error(f"--roles: unknown {sorted(unknown)}; choose from {ROLES}")

    made = add_worktree(args.baseline_rev) if args.baseline_rev else None
    baseline = (made or args.baseline).resolve()
    trees = {"before": baseline, "after": ROOT}
    work = Path(tempfile.mkdtemp(prefix="sms-rss-"))
    try:
        for label, tree in trees.items():
            if not (tree / CONFIG).is_file():
                raise SystemExit(f"{label} tree {tree}: no {CONFIG}")
            origin = job_origin(args.python, tree)
            if Path(origin).resolve() != (tree / "job").resolve():
                raise SystemExit(f"{label} tree {tree} imports job from {origin}")
        out = work / "out"
        make_study(out, args.trials)
        print(
            f"python {args.python}; before: {baseline}; after: {ROOT}; study {STUDY}, "
            f"{args.trials} trials in {out / JOURNAL_FILE}; median of {args.repeat}",
            flush=True,
        )
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for _ in range(args.repeat):
            for role in roles:
                for label, tree in trees.items():
                    runs.setdefault((role, label), []).append(measure(args.python, tree, role, out))
        results = []
        for role in roles:
            figures: dict[str, dict[str, Any]] = {}
            for label in trees:
                got = runs[(role, label)]
                figures[label] = {
                    "rss": median(got, "rss") / MIB,
                    "hwm": median(got, "hwm") / MIB,
                    "ready": median(got, "ready"),
                    "torch": "yes" if any(r["torch"] for r in got) else "no",
                    "all": " ".join(f"{r['rss'] / MIB:.0f}" for r in got),
                }
                f = figures[label]
                print(
                    f"{role:9s} {label:6s} rss {f['rss']:7.1f} MiB  hwm {f['hwm']:7.1f} MiB  "
                    f"ready {f['ready']:5.2f} s  torch {f['torch']:3s}  (rss MiB: {f['all']})",
                    flush=True,
                )
            b, a = figures["before"], figures["after"]
            results.append(
                f"RESULT role={role} rss_mib_before={b['rss']:.1f} rss_mib_after={a['rss']:.1f} "
                f"ratio={a['rss'] / b['rss']:.3f} hwm_mib_before={b['hwm']:.1f} "
                f"hwm_mib_after={a['hwm']:.1f} torch_before={b['torch']} "
                f"torch_after={a['torch']} ready_s_before={b['ready']:.2f} "
                f"ready_s_after={a['ready']:.2f}"
            )
        print("\n".join(results))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if made is not None:
            remove_worktree(made)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The command line's checks shared by verbs: folders, ports, the study's name, home,
output folder and storage, each a `UsageError` naming the flag before any work starts."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

import optuna

from job import settings
from job.config import Config
from job.errors import UsageError


def check_folder(path: Path, key: str) -> None:
    """`UsageError` naming `key` unless `path` is a folder this process may write into, or
    could be created as one (its nearest existing ancestor is a writable folder). Nothing
    is created: a verb checks its output folders before its first trial or epoch."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    within = "" if probe == path else f" (making {path})"
    if not probe.is_dir():
        raise UsageError(f"{key}: {probe} is not a folder{within}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{key}: {probe} is not writable{within}")


def check_port_free(port: int, key: str) -> None:
    """`UsageError` naming `key` when nothing could serve on `port` (0: any free one)
    now: the metrics server binds all addresses, with SO_REUSEADDR as it does."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            raise UsageError(f"{key}: port {port} is not free ({exc.strerror})") from None


def arg_study_name(args: argparse.Namespace, config: Config) -> str:
    """--study, then SMS_STUDY (the Jobs `research --launch` makes), then study.name."""
    from job.config import study_name_problem

    name = getattr(args, "study", None) or settings.current().study_name()
    if name and not getattr(args, "study", None) and (problem := study_name_problem(name)):
        raise settings.EnvError(f"{settings.SMS_STUDY}: {problem}")
    return str(name or config.study.name)


def is_version(args: argparse.Namespace, config: Config) -> bool:
    """Whether the study is version >= 2 of the config's (job.collect.research)."""
    from job.search.versions import version_number

    return (version_number(config.study.name, arg_study_name(args, config)) or 1) > 1


def home_of(args: argparse.Namespace, config: Config) -> Path:
    """The folder of the embedded study journal: --out, else runs/<study>, where every
    version of study.name shares study.name's (one journal holds them all)."""
    if getattr(args, "out", None):
        return Path(args.out)
    name = config.study.name if is_version(args, config) else arg_study_name(args, config)
    return Path("runs") / name


def out_dir_of(args: argparse.Namespace, config: Config) -> Path:
    """The study's own folder (results, checkpoints, retrained weights): job.collect.research's
    `version_folder` of the home."""
    from job.search.versions import version_folder

    return version_folder(home_of(args, config), config.study.name, arg_study_name(args, config))


def storage_url_of(args: argparse.Namespace, config: Config) -> str:
    """The storage URL (flag, environment, config, embedded journal), once the database
    behind it accepts connections: every verb that opens a storage waits here first, up
    to SMS_DB_WAIT_S (pods start before PostgreSQL is ready)."""
    from job.storage import resolve_storage, wait_for_database

    url = resolve_storage(args.storage, config, home_of(args, config))
    wait_for_database(url, settings.current().db_wait_s())
    return url


def study_of(
    args: argparse.Namespace, config: Config, create: bool = True
) -> tuple[optuna.Study, str]:
    """The study and its storage URL; with `create` False (status, collect) a study that
    is not there is an error (exit 2) and nothing is created."""
    from job.search.studies import open_study

    url = storage_url_of(args, config)
    return open_study(config, url, arg_study_name(args, config), create=create), url


def checkpoint_dir_of(args: argparse.Namespace, config: Config) -> Path:
    """Where a worker checkpoints a preempted trial, once what search and run check before
    any storage is opened passes: that folder writable, the training device there, and
    free space where the study writes (its journal, checkpoints, logs)."""
    from job.ml.train import check_checkpoint_dir, resolve_device  # torch: search verbs only
    from job.storage import check_free_space

    path = Path(config.study.checkpoint_dir or out_dir_of(args, config) / "checkpoints")
    key = "study.checkpoint_dir" if config.study.checkpoint_dir else "--out"
    check_folder(path, key)
    check_checkpoint_dir(path, key)  # written for real: permission bits do not tell
    check_free_space(path, key)  # a full disk tears a journal's records and checkpoints
    check_free_space(home_of(args, config), "--out")
    resolve_device(config.train.device)
    return path

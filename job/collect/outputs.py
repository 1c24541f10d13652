"""The collector's outputs, written so that no reader and no crash sees half of one.

- **One file** is written by `job.files.write_atomic`: a temporary file beside it
  (`.<name>.<pid>.tmp`), renamed over it.
- **One pick** is a set of files that belong together (model.yaml, weights.pt, card.json,
  model.onnx, model.int8.onnx, golden.npz), kept once per chosen trial in the real folder
  `selected/trial-<N>/` (`trial_folder`), however many policies chose that trial. Each
  policy's published path `selected/<policy>` is a relative symlink to it
  (`selected/best -> trial-7`). A trial's set is built beside, in
  `selected/.trial-<N>.new/` (the same filesystem), checked (`job.collect.publish`), then
  swapped in by `swap_in`: the published folder renamed aside to `.trial-<N>.old`, the
  new one renamed in, the old one removed. Only then is a policy's link pointed at it
  (`point`): a new link made as `.<policy>.link` and renamed over the old one, one
  atomic step. A folder a previous version left at `selected/<policy>` (no link) is
  renamed to `.<policy>.old` just before its link is renamed in, then removed. A policy
  that chooses nothing any more loses its link (`withdraw`), and a trial folder that no
  link points to any more is removed (`prune`), after every link is where it belongs.
  One collector at a time does this in a folder (`publish_lock`, an flock on
  `<out>/.publish.lock`).
- **Recovery** (`recover`, run under the lock before every publish): a collector stopped
  between the two renames left `.<name>.old` and no `<name>`: the old set (or the old
  layout's folder) is renamed back (the new one was never published). `.<name>.old`
  beside `<name>`: the new one was in, the old is removed. `.<name>.new`, `.<name>.gone`
  and `.<policy>.link` are removed. So after any crash every `selected/<policy>` resolves
  to the old complete set or the new one, never a mix; in the instant between a trial
  folder's two renames a reader finds no folder at all, never a partial one.
- **A write that fails** (disk full ENOSPC, quota EDQUOT, file size limit EFBIG, a
  read-only filesystem EROFS, EIO, ...) raises `OutputError`: one line naming the file as
  it would be published (not its temporary name) and the OS's reason; the CLI prints it
  and exits 1. What was being written is dropped (its temporary file or folder removed);
  every output written before keeps its last complete content.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from job.files import GONE, LINK, NEW, OLD, SIDE_FOLDER, writing

LOCK = ".publish.lock"
TRIAL_FOLDER = re.compile(r"^trial-(\d+)$")  # a pick's real folder under selected/


@contextmanager
def publish_lock(out: Path) -> Iterator[None]:
    """One publisher at a time in `out` (an flock, released by the OS if we die)."""
    with writing(out / LOCK):
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # a filesystem without locks (some NFS): go on unlocked
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
        yield
    finally:
        os.close(fd)


def trial_folder(number: int) -> str:
    """The name of trial `number`'s real folder under selected/ (`trial-7`)."""
    return f"trial-{number}"


def side(live: Path, kind: str) -> Path:
    """A side entry of `live`: `.<name>.new`, `.old`, `.gone` or `.link` beside it."""
    return live.with_name(f".{live.name}.{kind}")


def holder(live: Path) -> str | None:
    """Where a policy's path `selected/<policy>` leads, as `selected/<name>`: its link's
    trial folder, or the folder itself (a previous version's layout); None: nowhere."""
    if not live.is_dir():  # nothing there, or a link to nothing
        return None
    found = live.resolve() if live.is_symlink() else live
    return f"{live.parent.name}/{found.name}"


def _remove(path: Path) -> None:
    """A link (never what it points to) or a folder, whole."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def recover(selected: Path) -> list[str]:
    """Finish or undo what a stopped publisher left in `selected` (the module doc);
    returns one line per pick put back."""
    if not selected.is_dir():
        return []
    restored = []
    for entry in sorted(selected.iterdir()):
        found = SIDE_FOLDER.match(entry.name)
        if found is None or not (entry.is_dir() or entry.is_symlink()):
            continue
        live = selected / found.group(1)
        with writing(entry):
            # lexists: a policy's new link counts as there even before its trial is back
            if found.group(2) == OLD and not os.path.lexists(live):
                entry.rename(live)  # stopped between the renames: the old set comes back
                restored.append(f"{live}: the previous set restored (a publish was cut short)")
            else:
                _remove(entry)
    return restored


def fresh_side(live: Path) -> Path:
    """An empty `.<policy>.new` beside `live` to build the new set in."""
    staged = side(live, NEW)
    with writing(staged):
        if staged.exists():
            shutil.rmtree(staged)
        staged.mkdir(parents=True)
    return staged


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_in(staged: Path, live: Path) -> None:
    """Publish the complete set `staged` as `live` (the module doc); its files and the
    renames are flushed to disk first and after, so a power cut keeps one set too."""
    with writing(live):
        for path in staged.iterdir():
            _sync(path)
        _sync(staged)
        aside = side(live, OLD)
        if aside.exists():
            shutil.rmtree(aside)
        if live.exists():
            live.rename(aside)
        try:
            staged.rename(live)
        except OSError:
            if aside.exists():
                aside.rename(live)  # the old set back where it was
            raise
        _sync(live.parent)
        if aside.exists():
            shutil.rmtree(aside)


def point(live: Path, target: str) -> None:
    """Make a policy's path `live` a relative link to `target`, a trial folder beside it,
    in one atomic rename (the module doc): a reader finds the old link or the new one.
    A folder a previous version published there is renamed aside first (a rename cannot
    put a link over a folder), and removed once the link is in."""
    if live.is_symlink() and os.readlink(live) == target:
        return
    temp, aside = side(live, LINK), side(live, OLD)
    with writing(live):
        if os.path.lexists(temp):
            _remove(temp)
        os.symlink(target, temp)  # relative: the results folder may be moved or mounted
        try:
            moved = live.is_dir() and not live.is_symlink()
            if moved:
                if os.path.lexists(aside):
                    _remove(aside)
                live.rename(aside)
            try:
                os.replace(temp, live)
            except OSError:
                if moved:
                    aside.rename(live)  # the old folder back where it was
                raise
            _sync(live.parent)
            if moved:
                shutil.rmtree(aside)
        finally:
            if os.path.lexists(temp):
                temp.unlink()


def withdraw(live: Path) -> None:
    """Remove a policy's link (one unlink), or a published folder whole: renamed aside
    first, so that no reader (and no crash) finds part of it."""
    if live.is_symlink():
        with writing(live):
            live.unlink()
        return
    if not live.exists():
        return
    gone = side(live, GONE)
    with writing(live):
        if gone.exists():
            shutil.rmtree(gone)
        live.rename(gone)
        shutil.rmtree(gone)


def prune(selected: Path) -> list[str]:
    """Withdraw each trial folder in `selected` that no link there points to (any link:
    one a policy no longer in the config left still counts); returns their names. Run
    once every link is where it belongs, so no link is ever left pointing nowhere."""
    if not selected.is_dir():
        return []
    entries = sorted(selected.iterdir())
    base = selected.resolve()
    linked = set()
    for entry in entries:
        if entry.is_symlink() and SIDE_FOLDER.match(entry.name) is None:
            target = entry.resolve()
            if target.parent == base:
                linked.add(target.name)
    removed = []
    for entry in entries:
        folder = TRIAL_FOLDER.match(entry.name) and entry.is_dir() and not entry.is_symlink()
        if folder and entry.name not in linked:
            withdraw(entry)
            removed.append(entry.name)
    return removed

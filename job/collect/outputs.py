"""The collector's outputs, written so that no reader and no crash sees half of one.

- **One file** is written by `job.files.write_atomic`: a temporary file beside it
  (`.<name>.<pid>.tmp`), renamed over it.
- **One pick**, `selected/<policy>/`, is a set of files that belong together (model.yaml,
  weights.pt, card.json, model.onnx, model.int8.onnx). It is built beside, in
  `selected/.<policy>.new/` (the same filesystem), checked (`job.collect.publish`), then swapped in
  by `swap_in`: the published folder renamed aside to `.<policy>.old`, the new one renamed
  in, the old one removed. A pick no policy chooses any more is withdrawn (renamed to
  `.<policy>.gone`, then removed). One collector at a time does this in a folder
  (`publish_lock`, an flock on `<out>/.publish.lock`).
- **Recovery** (`recover`, run under the lock before every publish): a collector stopped
  between the two renames left `.<policy>.old` and no `<policy>`: the old set is renamed
  back (the new one was never published). `.<policy>.old` beside `<policy>`: the new set
  was in, the old is removed. `.<policy>.new` and `.<policy>.gone` are removed. So
  after any crash `selected/<policy>/` holds the old complete set or the new one, never a
  mix; in the instant between the two renames a reader finds no folder at all, never a
  partial one.
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
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from job.files import GONE, NEW, OLD, SIDE_FOLDER, writing

LOCK = ".publish.lock"


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


def side(live: Path, kind: str) -> Path:
    """The side folder of a pick: `.<policy>.new`, `.old` or `.gone` beside it."""
    return live.with_name(f".{live.name}.{kind}")


def recover(selected: Path) -> list[str]:
    """Finish or undo what a stopped publisher left in `selected` (the module doc);
    returns one line per pick put back."""
    if not selected.is_dir():
        return []
    restored = []
    for entry in sorted(selected.iterdir()):
        found = SIDE_FOLDER.match(entry.name)
        if found is None or not entry.is_dir():
            continue
        live = selected / found.group(1)
        with writing(entry):
            if found.group(2) == OLD and not live.exists():
                entry.rename(live)  # stopped between the renames: the old set comes back
                restored.append(f"{live}: the previous set restored (a publish was cut short)")
            else:
                shutil.rmtree(entry)
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


def withdraw(live: Path) -> None:
    """Remove a published set whole: renamed aside first, so that no reader (and no
    crash) finds part of it."""
    if not live.exists():
        return
    gone = side(live, GONE)
    with writing(live):
        if gone.exists():
            shutil.rmtree(gone)
        live.rename(gone)
        shutil.rmtree(gone)

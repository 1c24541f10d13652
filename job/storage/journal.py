"""The embedded journal file: Optuna's `JournalFileBackend`, made safe against torn writes.

Optuna appends each operation as one line of JSON, under its lock file
(`<journal>.lock`), with one `write` and an `fsync`. A write cut short (the disk full, the
machine lost) leaves a *torn tail*: a last line without its newline. Optuna's reader
skips it, but its next append is written onto it, and the joined line is garbage in the
middle of the journal: from then on every reader raised `JSONDecodeError`, for ever.

Here:

- **A torn tail is never built upon.** Before each append, under the journal's lock, the
  last byte is looked at; when it is not a newline, the torn bytes (never acknowledged:
  their write failed) are moved aside into `<journal>.torn-<UTC time>` and the journal is
  cut back to its last whole record; one line on stderr says so. A reader skips a torn
  tail as Optuna's does (it may be a write in progress).
- **Damage is named, not raised as JSON.** A whole line (it has its newline) that is not
  a journal record stops every reader with `JournalDamagedError`: one line naming the file,
  the line and the command that repairs it, `python -m job repair-journal PATH`
  (`repair_journal`: keeps every intact record, moves the rest into
  `<journal>.damaged-<UTC time>`). Dropping a joined line loses nothing any process saw:
  Optuna skipped it while it was last, and raised on it once it was not.
- **A file that is no journal** (a config, an image, an SQLite file named by a
  `journal:///` URL) is refused when opened, before anything is written to it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
from collections.abc import Generator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file

from job.storage.base import StorageError, StudyInUseError
from job.storage.locks import RUN_LOCK, holder_name

# Every record Optuna writes starts so (json.dumps of {"op_code": …, "worker_id": …}).
MAGIC = b'{"op_code"'
TORN = ".torn-"
DAMAGED = ".damaged-"
REPAIR = "python -m job repair-journal"


class JournalDamagedError(StorageError):
    """A journal line that is not a record, or a file that is not a journal: exit 2."""


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def _record(line: bytes) -> dict[str, Any] | None:
    """The record a whole journal line holds, or None when it holds none."""
    if not line.startswith(MAGIC):
        return None
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) and "op_code" in record else None


def _not_a_journal(path: str | Path) -> JournalDamagedError:
    return JournalDamagedError(
        f"journal {path}: not an Optuna journal file (it does not start with a journal "
        "record); name a journal file or a path that does not exist yet"
    )


def _damaged(path: str | Path, line: int) -> JournalDamagedError:
    return JournalDamagedError(
        f"journal {path}: line {line} is not a journal record (a torn write built upon); "
        f"repair it with: {REPAIR} {path}"
    )


def check_head(path: str | Path) -> None:
    """`JournalDamagedError` unless the file at `path` is empty or starts as a journal
    record does (reads at most 10 bytes; creates nothing)."""
    with open(path, "rb") as handle:
        head = handle.read(len(MAGIC))
    if head and not MAGIC.startswith(head):
        raise _not_a_journal(path)


class JournalBackend(JournalFileBackend):
    """Optuna's journal file backend that never appends onto a torn record and names a
    damaged line instead of raising `JSONDecodeError` (the module's docstring)."""

    def __init__(self, file_path: str) -> None:
        if os.path.exists(file_path):
            check_head(file_path)
        super().__init__(file_path)

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        """Optuna's reader, but for what it does with a line that is not a record: a
        whole line raises `JournalDamagedError`; the last, without its newline (a torn
        tail, or a write in progress), is skipped as Optuna skips it."""
        offsets = self._log_number_offset
        with open(self._file_path, "rb") as handle:
            remaining = os.fstat(handle.fileno()).st_size  # later appends: the next read's
            start = 0
            if log_number_from in offsets:
                handle.seek(offsets[log_number_from])
                start = log_number_from
                remaining -= offsets[log_number_from]
            for log_number, line in enumerate(handle, start=start):
                remaining -= len(line)
                if remaining < 0 or not line.endswith(b"\n"):
                    return  # not a record yet: a torn tail or a write in progress
                if log_number + 1 not in offsets:
                    offsets[log_number + 1] = offsets[log_number] + len(line)
                if log_number < log_number_from:
                    continue
                record = _record(line)
                if record is None:
                    del offsets[log_number + 1]
                    if log_number == 0 and not line.startswith(MAGIC[:2]):
                        raise _not_a_journal(self._file_path)
                    raise _damaged(self._file_path, log_number + 1)
                yield record

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Optuna's append, after cutting off a torn tail (`cut_torn_tail`), under the
        same lock, so that no live writer races the cut."""
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode()
        # Unbuffered (no flush at close to fail a second time); a short write loops on.
        with get_lock_file(self._lock), open(self._file_path, "a+b", buffering=0) as handle:
            _cut_torn_tail(handle.fileno(), Path(self._file_path))
            try:
                view = memoryview(data)
                while view:
                    view = view[handle.write(view) or 0 :]
                os.fsync(handle.fileno())
            except OSError as exc:  # a full disk: the next append cuts what got written
                raise OSError(exc.errno, exc.strerror, self._file_path) from None


def cut_torn_tail(path: Path) -> Path | None:
    """Move a torn last record of the journal at `path` aside, into
    `<journal>.torn-<UTC time>`, and cut the journal back to its last whole line; one line
    on stderr says so. Call it under the journal's lock. Returns the file the bytes went
    to, or None when the journal ends in a newline (the common case: one read of 1 byte).
    Bytes that cannot be the start of a record are no torn write: `JournalDamagedError`."""
    with open(path, "r+b") as handle:
        return _cut_torn_tail(handle.fileno(), path)


def _cut_torn_tail(fd: int, path: Path) -> Path | None:
    """`cut_torn_tail` on the journal open (readable, writable) as `fd`."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return None
    keep = _last_newline(fd, size)
    torn = os.pread(fd, size - keep, keep)
    if not (torn.startswith(MAGIC) or MAGIC.startswith(torn)):
        raise (_not_a_journal(path) if keep == 0 else _damaged(path, _line_of(path, keep)))
    aside = path.with_name(f"{path.name}{TORN}{_stamp()}")
    with open(aside, "xb") as out:  # the disk may still be full: then nothing is cut
        out.write(torn)
        out.flush()
        os.fsync(out.fileno())
    os.ftruncate(fd, keep)
    os.fsync(fd)
    print(
        f"journal {path}: its last record was torn ({len(torn)} bytes, never acknowledged); "
        f"moved aside to {aside.name}",
        file=sys.stderr,
        flush=True,
    )
    return aside


def _last_newline(fd: int, size: int) -> int:
    """The offset just past the last newline of the file (0 without one), read backwards
    in 64 KiB steps: a torn record is at most one record long."""
    end = size
    while end > 0:
        begin = max(0, end - 65536)
        chunk = os.pread(fd, end - begin, begin)
        found = chunk.rfind(b"\n")
        if found >= 0:
            return begin + found + 1
        end = begin
    return 0


def _line_of(path: Path, offset: int) -> int:
    """The 1-based line number of the line starting at byte `offset`."""
    lines = 1
    with open(path, "rb") as handle:
        while offset > 0:
            chunk = handle.read(min(offset, 1 << 20))
            if not chunk:
                break
            lines += chunk.count(b"\n")
            offset -= len(chunk)
    return lines


def check_journal(path: Path) -> None:
    """Read the whole journal at `path` (when there is one) as a reader would, creating
    nothing: `JournalDamagedError` naming the file and the first damaged line, or the file
    when it is no journal. A torn tail is no damage (the next writer cuts it off)."""
    if not path.is_file():
        return
    check_head(path)
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                return  # a torn tail, or a write in progress
            if _record(line) is None:
                raise _not_a_journal(path) if number == 1 else _damaged(path, number)


def repair_journal(path: Path) -> str:
    """`repair-journal`: keep every whole record of the journal at `path`, in order, and
    move every other line (a torn record, one joined to a torn one) into
    `<journal>.damaged-<UTC time>`, then check that Optuna replays the result. Refused
    while a process works on the study (`run`, `search`: they hold `<journal>.run-lock`),
    and done under the journal's own lock. Returns what it did, in one line."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal._file import JournalFileSymlinkLock

    if not path.is_file():
        raise JournalDamagedError(f"repair-journal: no journal file at {path}")
    check_head(path)
    run_lock = Path(str(path) + RUN_LOCK)
    with open(run_lock, "a") as holder:
        try:
            fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = holder_name(run_lock)
            raise StudyInUseError(
                f"repair-journal: {path} is in use by {who}; stop it first"
            ) from None
        with get_lock_file(JournalFileSymlinkLock(str(path))):
            kept, dropped, numbers = bytearray(), bytearray(), []
            with open(path, "rb") as handle:
                for number, line in enumerate(handle, start=1):
                    if line.endswith(b"\n") and _record(line) is not None:
                        kept += line
                    else:
                        dropped += line if line.endswith(b"\n") else line + b"\n"
                        numbers.append(number)
            if not numbers:
                return f"journal {path}: no damaged record; nothing changed"
            stamp = _stamp()
            aside = path.with_name(f"{path.name}{DAMAGED}{stamp}")
            fresh = path.with_name(f"{path.name}.repair-{stamp}")
            for target, content in ((aside, dropped), (fresh, kept)):
                with open(target, "xb") as out:
                    out.write(content)
                    out.flush()
                    os.fsync(out.fileno())
            shutil.copymode(path, fresh)
            try:
                JournalStorage(JournalBackend(str(fresh)))  # Optuna replays what is kept
            except Exception as exc:
                fresh.unlink(missing_ok=True)
                raise JournalDamagedError(
                    f"repair-journal: {path}: the intact records do not replay "
                    f"({type(exc).__name__}: {str(exc)[:120]}); nothing changed, the damaged "
                    f"lines are in {aside.name}"
                ) from None
            os.replace(fresh, path)
            with contextlib.suppress(OSError):  # the rename made durable
                folder = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)
    shown = ", ".join(map(str, numbers[:5])) + (", …" if len(numbers) > 5 else "")
    records = kept.count(b"\n")
    return (
        f"journal {path}: kept {records} records; moved {len(numbers)} damaged line(s) "
        f"({shown}) to {aside.name}"
    )


# --- free space: a run or search refuses to start writing on a (nearly) full disk -------

MIN_FREE_BYTES = 128 * 2**20  # a journal, checkpoints, logs, picks: a full disk tears them


def check_free_space(folder: Path, key: str) -> None:
    """`StorageError` naming `key`, the folder and its free bytes when the file system
    that holds `folder` (or would: its nearest existing ancestor) has less than
    `MIN_FREE_BYTES` free for this user. `run` and `search` call it before they write."""
    probe = folder.absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        usage = os.statvfs(probe)
    except OSError:
        return  # not a folder we can look at: the folder checks say why
    if usage.f_flag & os.ST_RDONLY:
        return  # nothing is written there at all: the folder checks say so if it must be
    free = usage.f_bavail * usage.f_frsize
    if free < MIN_FREE_BYTES:
        raise StorageError(
            f"{key}: only {free:,} bytes free in {probe} (at least {MIN_FREE_BYTES:,} needed "
            "before a study writes there: a full disk tears its journal and checkpoints); "
            "free some space or choose another folder"
        )

"""Files, below every stage: written atomically, read with bounds.

Two rules of the house live here. A file others read is written to a temporary file
beside it and renamed over it (`write_atomic`): a reader, or a crash, sees the old file
or the new one, never half of one. A file a user or another pod hands us (a config, a
model YAML, a card) is parsed with limits (`SafeLoader`, `json_problem`): an alias bomb,
deep nesting, a key given twice or a 5000-digit integer is one clear line naming the
file and line, never a hang or a traceback; and an error quotes a value, never the whole
of one (`short`). A write that fails is one line naming the file as it is published
(`writing`, `OutputError`: exit 1). Imports nothing of the product but its error kinds.
"""

from __future__ import annotations

import errno
import math
import os
import re
import reprlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml

from job.errors import BadInput, Failure


class _Short(reprlib.Repr):
    """repr() with every part bounded: an error quotes a value, never the whole of one."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxlong, self.maxother = 3, 60, 40, 60
        self.maxlist = self.maxtuple = self.maxset = self.maxdict = 6

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 200:  # repr() itself refuses past 4300 digits
            sign = "-" if x < 0 else ""
            return f"{sign}<an integer of about {int(math.log10(abs(x))) + 1} digits>"
        return super().repr_int(x, level)


def short(value: object) -> str:
    """A value as an error line quotes it: repr() cut to some 60 characters."""
    return _Short().repr(value)


def key_name(part: str) -> str:
    """A key as an error line names it: as typed, or quoted and cut when long or odd."""
    return part if len(part) <= 40 and part.isprintable() else short(part)


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` to a temporary file beside `path`, then rename it over `path`: a
    reader (or a crash) sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# What a config or model YAML may hold: a handful of aliases, a few levels, a few pages.
# An alias bomb (each alias repeating the one before: 600 bytes → 10**9 nodes) and
# deep nesting (Python's recursion) are refused while composing, before any expansion.
MAX_YAML_ALIASES = 256
MAX_YAML_DEPTH = 64  # nested collections, aliases expanded
MAX_YAML_NODES = 100_000  # scalars and collections, aliases expanded
MAX_INT_DIGITS = 4300  # Python's own limit on int <-> decimal text
_MAX_INT_BITS = (10**MAX_INT_DIGITS - 1).bit_length()


class YAMLRefused(yaml.MarkedYAMLError):
    """YAML that parses but is refused: the message is `problem`, at `problem_mark`."""

    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem=problem, problem_mark=mark)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand past MAX_YAML_NODES nodes or MAX_YAML_DEPTH
    levels, or into themselves: sizes counted once per node (iteratively, so no
    recursion), never by expanding."""
    done: dict[int, tuple[int, int]] = {}  # id → (nodes, depth), aliases expanded
    open_: set[int] = set()  # on the current path: reaching one again is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, visited = stack.pop()
        if visited:
            kids = [done[id(k)] for k in _children(node)]
            size = 1 + sum(n for n, _ in kids)
            depth = 1 + max((d for _, d in kids), default=0)
            open_.discard(id(node))
            done[id(node)] = (size, depth)
            if size > MAX_YAML_NODES:
                raise YAMLRefused(
                    f"aliases expand to more than {MAX_YAML_NODES:,} values", node.start_mark
                )
            if depth > MAX_YAML_DEPTH:
                raise YAMLRefused(
                    f"aliases nest values deeper than {MAX_YAML_DEPTH} levels", node.start_mark
                )
        elif id(node) not in done:
            if id(node) in open_:
                raise YAMLRefused("an alias refers to a value that contains it", node.start_mark)
            open_.add(id(node))
            stack.append((node, True))
            stack.extend((k, False) for k in _children(node) if id(k) not in done)


class SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses what a config never needs and a bad file can abuse:
    more than MAX_YAML_ALIASES aliases, an expansion past MAX_YAML_NODES values, nesting
    deeper than MAX_YAML_DEPTH, a key given twice in one mapping (YAML would keep the
    last silently), and an integer of more than MAX_INT_DIGITS digits."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        mark: yaml.Mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise YAMLRefused(f"more than {MAX_YAML_ALIASES} aliases (*name)", mark)
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise YAMLRefused(f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> yaml.Node | None:
        node: yaml.Node | None = super().compose_document()
        if node is not None:
            _check_expansion(node)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    twice = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the constructor says so
                    continue
                if twice:
                    raise YAMLRefused(f"duplicate key {short(key)}", key_node.start_mark)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        try:
            value: int | None = super().construct_yaml_int(node)
        except ValueError:  # Python's own limit on decimal digits
            value = None
        if value is None or value.bit_length() > _MAX_INT_BITS:  # hex and octal too
            raise YAMLRefused(f"an integer of more than {MAX_INT_DIGITS} digits", node.start_mark)
        return value


SafeLoader.add_constructor("tag:yaml.org,2002:int", SafeLoader.construct_yaml_int)


def parse_yaml(text: str) -> Any:
    """One YAML document with SafeLoader's limits; `yaml.YAMLError` when it is not one."""
    loader = SafeLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:  # the limits above should make this unreachable
        raise YAMLRefused(f"nested deeper than {MAX_YAML_DEPTH} levels", None) from None
    finally:
        loader.dispose()


def yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, for one line: `line 7: duplicate key 'train'`, `line 3 not valid YAML`."""
    mark = getattr(exc, "problem_mark", None)
    line = f"line {mark.line + 1}" if mark is not None else ""
    if isinstance(exc, YAMLRefused):
        return f"{line}: {exc.problem}" if line else str(exc.problem)
    return f"{line} not valid YAML" if line else "not valid YAML"


def json_problem(value: Any, max_depth: int = MAX_YAML_DEPTH) -> str | None:
    """What a parsed JSON document (a card) holds that no writer of ours writes, naming
    its key: nesting deeper than `max_depth`, or a number that is not finite (Python's
    json reads `Infinity` and `NaN`; ours are written with allow_nan=False). None: fine."""
    stack: list[tuple[str, Any, int]] = [("", value, 1)]
    while stack:
        key, item, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return f"{key or 'value'}: must be a finite number, got {item}"
        children: list[tuple[str, Any]] = []
        if isinstance(item, dict):
            children = [
                (f"{key}.{key_name(str(k))}" if key else key_name(str(k)), v)
                for k, v in item.items()
            ]
        elif isinstance(item, list):
            children = [(f"{key}[{i}]", v) for i, v in enumerate(item)]
        if children and depth >= max_depth:
            where = key if len(key) <= 60 else f"{key[:40]}…"
            return f"{where or 'value'}: nested deeper than {max_depth} levels"
        stack.extend((k, v, depth + 1) for k, v in reversed(children))
    return None


def read_yaml(path: str | Path, error: type[ValueError]) -> Any:
    """Parse a YAML file; a missing, malformed or refused file (`SafeLoader`) raises
    `error` naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a YAML file (not UTF-8 text)") from None
    try:
        return parse_yaml(text)
    except yaml.YAMLError as exc:
        raise error(f"{path}: {yaml_problem(exc)}") from None


# --- a failed write, said in one line (the collector's outputs, exports, previews) --------
# A pick's folder is built beside its published name as `.trial-<N>.new` and swapped in,
# a policy's link made as `.<policy>.link` and renamed over its own (job.collect.outputs);
# a message names the file as it is published, never the temporary.

NEW, OLD, GONE, LINK = "new", "old", "gone", "link"
SIDE_FOLDER = re.compile(rf"^\.(.+)\.({NEW}|{OLD}|{GONE}|{LINK})$")  # a pick mid-swap
TEMP_FILE = re.compile(r"^\.(.+?)\.\d+\.(?:tmp|pre\.onnx)$")  # write_atomic's, int8's temporaries


class OutputError(Failure):
    """An output could not be written (disk full, quota, size limit, read-only): one line
    naming the file and the OS's reason; exit 1."""


class OutputFolderError(BadInput, ValueError):
    """An output folder named on the command line cannot be made there: exit 2, one line
    naming the flag."""


def shown(path: Path) -> str:
    """`path` as it is published: a pick's side folder as the pick's own, a temporary
    file as the file it becomes (`selected/.trial-3.new/.card.json.7.tmp` →
    `selected/trial-3/card.json`)."""
    parts = list(path.parts)
    for i, part in enumerate(parts):
        found = SIDE_FOLDER.match(part) or (TEMP_FILE.match(part) if i == len(parts) - 1 else None)
        if found:
            parts[i] = found.group(1)
    return str(Path(*parts)) if parts else str(path)


def reason(exc: OSError) -> str:
    """The OS's reason in words and by name: `No space left on device (ENOSPC)`."""
    name = errno.errorcode.get(exc.errno or 0)
    text = exc.strerror or type(exc).__name__
    return f"{text} ({name})" if name else text


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Any OSError inside → `OutputError` naming `path` (as published) and the reason:
    Python's own message names no file for a failed write() and the source for a
    failed copy."""
    try:
        yield
    except OSError as exc:
        raise OutputError(
            f"cannot write {shown(path)}: {reason(exc)}; the outputs written before are kept"
        ) from None


def make_folder(path: Path, flag: str) -> None:
    """`path` and any missing parents, or `OutputFolderError` naming `flag` with nothing
    left behind (the parents made before the failure are removed again)."""
    missing = []
    probe = path
    while not probe.exists() and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    made: list[Path] = []
    try:
        for folder in reversed(missing):
            folder.mkdir()
            made.append(folder)
    except OSError as exc:
        for folder in reversed(made):
            with suppress(OSError):
                folder.rmdir()
        raise OutputFolderError(f"{flag}: cannot make {path}: {reason(exc)}") from None
    if not path.is_dir():
        raise OutputFolderError(f"{flag}: {path} is not a folder")

"""Directory scanner: walks input trees into file entries sorted by the UTF-8 bytes of their path.

The scan is the first stage of a put (see docs/SCANNING.md for the user-facing rules):
it lists files with ``os.scandir``, applies include/exclude globs, follows or skips
symlinks by a fixed policy, and yields one :class:`ScanEntry` per regular file, in the
order manifests store them. It streams: only the sorted listings of the directories on
the current path are held in memory, so a tree of 10^7 files costs no more memory than
its widest directories.

Anything it cannot or will not turn into an entry (special files, dangling symlinks,
symlink loops, non-UTF-8 names, unreadable directories, files that vanish mid-scan)
is skipped and reported once as a :class:`ScanWarning`; the scan itself never stops for
those.
"""

from __future__ import annotations

import enum
import errno
import os
import re
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from typing import Literal, NamedTuple

from syncengine.errors import ConfigError
from syncengine.terminal_text import shown

__all__ = ["VCS_DIRS", "ScanEntry", "ScanWarning", "ScanWarningKind", "excluded", "scan"]

#: Folders of version-control systems (and a `.git` file), left out of every scan unless
#: ``include_vcs``: a tree is logged for its files, not for its history (a `put .` in a fresh
#: clone would otherwise store all of `.git/`). Only names no data folder carries by accident:
#: CVS's plain `CVS` and files such as Fossil's `.fslckout` are logged like any other
#: (see docs/SCANNING.md).
VCS_DIRS = (".bzr", ".git", ".hg", ".jj", ".pijul", ".svn", "_darcs")
# Directories, and `.git` also as a file: the pointer of a git worktree or submodule, which
# in a downloaded copy would name a repository that is not there.
_VCS_PATTERNS = [".git", *(d + "/" for d in VCS_DIRS if d != ".git")]

# st_mode file-type bits, inlined in the hot loop instead of calling stat.S_ISREG.
_S_IFMT = 0o170000
_S_IFREG = 0o100000
_S_IFDIR = 0o040000
_SPECIAL_NAMES = {
    0o010000: "a FIFO (named pipe)",
    0o020000: "a character device",
    0o060000: "a block device",
    0o140000: "a socket",
}


class ScanEntry(NamedTuple):
    """One regular file found by :func:`scan` (an immutable record).

    ``path`` is the manifest path: relative, ``/``-separated, valid UTF-8, without
    ``.``/``..`` parts. ``abspath`` is what to open. The stat fields describe the file
    after following a symlink, as seen during the scan.
    """

    path: str
    abspath: str
    size: int
    mode: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int


class ScanWarningKind(enum.Enum):
    """Why something in the input tree was skipped."""

    SYMLINK_LOOP = "symlink_loop"
    DANGLING_SYMLINK = "dangling_symlink"
    SPECIAL_FILE = "special_file"
    NON_UTF8_NAME = "non_utf8_name"
    UNREADABLE = "unreadable"
    SKIPPED_SYMLINK = "skipped_symlink"
    VANISHED = "vanished"


class ScanWarning(NamedTuple):
    """Something the scan skipped: ``path`` is the printable on-disk path
    (``terminal_text.shown``: undecodable bytes as ``\\xNN``, controls escaped),
    ``message`` one line saying what happened and that it was skipped."""

    kind: ScanWarningKind
    path: str
    message: str


WarningHandler = Callable[[ScanWarning], None]


def _log_warning(warning: ScanWarning) -> None:
    import logging  # only when there is something to say: not imported for a clean scan

    logging.getLogger("syncengine.scan").warning("%s", warning.message)


def _is_valid_utf8(name: str) -> bool:
    # Undecodable bytes arrive as lone surrogates (PEP 383), which UTF-8 refuses.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- globs -------------------------------------------------------------------------


def _class_to_regex(pattern: str, start: int) -> tuple[str, int] | None:
    """Translate the ``[...]`` starting at ``pattern[start]``; return (regex, index
    after ``]``) or None when the bracket is not closed (then ``[`` is literal)."""
    i = start + 1
    negate = i < len(pattern) and pattern[i] in "!^"
    if negate:
        i += 1
    members: list[str] = []
    first = True
    while i < len(pattern):
        c = pattern[i]
        if c == "]" and not first:
            body = "".join(members)
            # A class never matches '/', like fnmatch with FNM_PATHNAME.
            return ("[^/" + body + "]" if negate else "[" + body + "]"), i + 1
        if c == "\\" and i + 1 < len(pattern):
            i += 1
            members.append(re.escape(pattern[i]))
        elif c == "-" and not first and i + 1 < len(pattern) and pattern[i + 1] != "]":
            members.append("-")
        else:
            members.append(re.escape(c) if c != "-" else "\\-")
        first = False
        i += 1
    return None


def _component_to_regex(part: str) -> str:
    out: list[str] = []
    i = 0
    n = len(part)
    while i < n:
        c = part[i]
        if c == "*":
            while i < n and part[i] == "*":
                i += 1
            out.append("[^/]*")
            continue
        if c == "?":
            out.append("[^/]")
        elif c == "[":
            translated = _class_to_regex(part, i)
            if translated is not None:
                out.append(translated[0])
                i = translated[1]
                continue
            out.append(re.escape(c))
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(part[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


class _Glob(NamedTuple):
    regex: str
    anchored: bool  # matched against the whole relative path, else against the basename
    dir_only: bool


def _parse_glob(pattern: str, option: str) -> _Glob:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"invalid {option} pattern {pattern!r}: {why}")

    if not isinstance(pattern, str):
        raise TypeError(f"{option} patterns must be str, got {type(pattern).__name__}")
    if not pattern:
        raise bad("empty pattern")
    if pattern.startswith("!"):
        raise bad("negation ('!') is not supported; use include/exclude (write '\\!' for a literal '!')")
    if "\x00" in pattern:
        raise bad("NUL character")
    dir_only = pattern.endswith("/")
    body = pattern.rstrip("/")
    anchored = "/" in body
    body = body.lstrip("/")
    if not body:
        raise bad("matches nothing")
    parts = body.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise bad("empty, '.' and '..' path components never match a scanned path")
    regex: list[str] = []
    last = len(parts) - 1
    for i, part in enumerate(parts):
        if part == "**":
            if i > 0 and parts[i - 1] == "**":
                continue  # '**/**' is the same as '**'
            regex.append(".*" if i == last else "(?:.*/)?")
        else:
            regex.append(_component_to_regex(part) + ("" if i == last else "/"))
    return _Glob("".join(regex), anchored, dir_only)


class _Matcher(NamedTuple):
    """One option's globs, compiled into at most four regexes so a path costs at most
    two ``fullmatch`` calls: basename patterns against the name, anchored patterns
    against the relative path; files and directories separately because of 'dir/'."""

    file_name: re.Pattern[str] | None
    file_path: re.Pattern[str] | None
    dir_name: re.Pattern[str] | None
    dir_path: re.Pattern[str] | None

    @property
    def empty(self) -> bool:
        return (
            self.file_name is None
            and self.file_path is None
            and self.dir_name is None
            and self.dir_path is None
        )


def _compile(regexes: list[str], option: str) -> re.Pattern[str] | None:
    if not regexes:
        return None
    try:
        return re.compile("|".join(f"(?:{r})" for r in regexes), re.DOTALL)
    except re.error as exc:  # e.g. a reversed range such as '[z-a]'
        raise ConfigError(f"invalid {option} pattern: {exc}") from None


def _build_matcher(patterns: Sequence[str], option: str) -> _Matcher:
    if isinstance(patterns, (str, bytes)):
        raise TypeError(f"{option} must be a sequence of patterns, not a single {type(patterns).__name__}")
    buckets: dict[tuple[bool, bool], list[str]] = {(d, a): [] for d in (False, True) for a in (False, True)}
    for pattern in patterns:
        glob = _parse_glob(pattern, option)
        buckets[(True, glob.anchored)].append(glob.regex)
        if not glob.dir_only:
            buckets[(False, glob.anchored)].append(glob.regex)
    return _Matcher(
        file_name=_compile(buckets[(False, False)], option),
        file_path=_compile(buckets[(False, True)], option),
        dir_name=_compile(buckets[(True, False)], option),
        dir_path=_compile(buckets[(True, True)], option),
    )


def _matches(
    name_rx: re.Pattern[str] | None, path_rx: re.Pattern[str] | None, name: str, path: str, pos: int
) -> bool:
    return (name_rx is not None and name_rx.fullmatch(name) is not None) or (
        path_rx is not None and path_rx.fullmatch(path, pos) is not None
    )


def excluded(relpath: str, exclude: Sequence[str], *, is_dir: bool, include_vcs: bool = False) -> bool:
    """Whether a scan with these ``exclude`` patterns (and ``include_vcs``) leaves out
    ``relpath`` (``/``-separated, relative to the root), itself or with a folder above it.

    >>> excluded("build/lib", ["build/"], is_dir=True), excluded("a/.git", [], is_dir=True)
    (True, True)
    """
    m = _build_matcher([*exclude, *([] if include_vcs else _VCS_PATTERNS)], "exclude")
    parts = relpath.split("/")
    for i, name in enumerate(parts):
        path = "/".join(parts[: i + 1])
        if i < len(parts) - 1 or is_dir:
            if _matches(m.dir_name, m.dir_path, name, path, 0):
                return True
        elif _matches(m.file_name, m.file_path, name, path, 0):
            return True
    return False


# --- the walk ----------------------------------------------------------------------


def _normalize_prefix(prefix: str) -> str:
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be str, got {type(prefix).__name__}")
    if not prefix:
        return ""
    stripped = prefix.rstrip("/")
    if prefix.startswith("/") or not stripped:
        raise ConfigError(f"invalid prefix {prefix!r}: must be a relative path such as 'data/train'")
    for part in stripped.split("/"):
        if part in ("", ".", ".."):
            raise ConfigError(f"invalid prefix {prefix!r}: empty, '.' and '..' components are not allowed")
    if "\x00" in stripped or not _is_valid_utf8(stripped):
        raise ConfigError(f"invalid prefix {prefix!r}: must be valid UTF-8 text without NUL")
    return stripped


def _absolute(root: str) -> str:
    path = root if os.path.isabs(root) else os.path.join(os.getcwd(), root)
    # normpath is only lexical: it is wrong across '..' after a symlink, so keep those as given.
    if ".." in path.split(os.sep):
        return path
    return os.path.normpath(path)


_by_key = itemgetter(0)
_Child = tuple[str, "os.DirEntry[str]", bool]


#: ``follow_symlinks``: True follows every link, False skips every link, ``"within"`` follows a
#: link only when its target resolves inside the scanned root (the default of put: a shared
#: or downloaded input folder must not make it upload ``~/.aws/credentials``).
SymlinkPolicy = bool | Literal["within"]


def _list_dir(abspath: str, follow_symlinks: SymlinkPolicy) -> list[_Child]:
    """One directory's children, sorted so that walking them in order yields full paths
    in byte order: directories sort as ``name + '/'`` because their descendants do."""
    children: list[_Child] = []
    append = children.append
    with os.scandir(abspath) as it:
        for entry in it:
            try:
                is_dir = entry.is_dir(follow_symlinks=bool(follow_symlinks))
            except OSError:
                is_dir = False  # e.g. ELOOP; reported when the entry is stat()ed as a file
            if is_dir:
                append((entry.name + "/", entry, True))
            else:
                append((entry.name, entry, False))
    children.sort(key=_by_key)
    return children


class _Walk:
    """State shared by one scan: options, the warning sink and the ancestor chain."""

    __slots__ = ("ancestors", "exclude", "follow_symlinks", "include", "on_warning", "real_root", "skip")

    def __init__(
        self,
        include: _Matcher,
        exclude: _Matcher,
        follow_symlinks: SymlinkPolicy,
        on_warning: WarningHandler,
        skip: int,
    ):
        self.include = include
        self.exclude = exclude
        self.follow_symlinks = follow_symlinks
        self.real_root = ""  # set by scan() for the "within" policy
        self.on_warning = on_warning
        self.skip = skip  # len(prefix + "/"): where the relative path starts in an entry path
        # (st_dev, st_ino) -> abspath of every directory on the current path; a directory
        # already in here would be walked forever, so it is a loop.
        self.ancestors: dict[tuple[int, int], str] = {}

    def warn(self, kind: ScanWarningKind, abspath: str, what: str) -> None:
        printable = shown(abspath)
        self.on_warning(ScanWarning(kind, printable, f"{printable}: {what}"))

    def warn_stat_error(self, entry: os.DirEntry[str], exc: OSError) -> None:
        """Explain why stat() of an entry failed."""
        if exc.errno == errno.ELOOP:
            self.warn(
                ScanWarningKind.SYMLINK_LOOP,
                entry.path,
                "symlink chain loops (too many levels of symbolic links); skipped",
            )
        elif isinstance(exc, FileNotFoundError):
            if entry.is_symlink():
                self.warn(
                    ScanWarningKind.DANGLING_SYMLINK,
                    entry.path,
                    f"dangling symlink to {_readlink(entry.path)}; skipped",
                )
            else:
                self.warn(ScanWarningKind.VANISHED, entry.path, "disappeared during the scan; skipped")
        else:
            self.warn(ScanWarningKind.UNREADABLE, entry.path, f"cannot stat ({exc.strerror}); skipped")

    def leaves_tree(self, entry: os.DirEntry[str]) -> bool:
        """Under the "within" policy, whether `entry` is a link whose target resolves outside
        the root (then it is skipped with a warning saying how to follow it)."""
        if self.follow_symlinks != "within" or not entry.is_symlink():
            return False
        target = os.path.realpath(entry.path)
        if target == self.real_root or target.startswith(self.real_root.rstrip("/") + "/"):
            return False
        self.warn(
            ScanWarningKind.SKIPPED_SYMLINK,
            entry.path,
            f"symlink to {_readlink(entry.path)} leads out of the folder being logged; skipped "
            "(--follow-symlinks follows it)",
        )
        return True

    def open_dir(self, abspath: str) -> list[_Child] | None:
        try:
            return _list_dir(abspath, self.follow_symlinks)
        except (FileNotFoundError, NotADirectoryError):
            self.warn(ScanWarningKind.VANISHED, abspath, "directory disappeared during the scan; skipped")
        except OSError as exc:
            self.warn(
                ScanWarningKind.UNREADABLE,
                abspath,
                f"cannot read directory ({exc.strerror}); skipped with everything inside it",
            )
        return None

    def walk(
        self, root_children: list[_Child], root_key: tuple[int, int], root_abspath: str, out_dir: str
    ) -> Iterator[ScanEntry]:
        # Explicit stack instead of recursion: depth is unbounded, and a generator chain
        # per level would cost a frame resume per entry per level.
        ancestors = self.ancestors
        ancestors[root_key] = root_abspath
        include, exclude = self.include, self.exclude
        ex_fname, ex_fpath, ex_dname, ex_dpath = (
            exclude.file_name,
            exclude.file_path,
            exclude.dir_name,
            exclude.dir_path,
        )
        in_fname, in_fpath, in_dname, in_dpath = (
            include.file_name,
            include.file_path,
            include.dir_name,
            include.dir_path,
        )
        filter_files = ex_fname is not None or ex_fpath is not None
        select = not include.empty
        follow = self.follow_symlinks
        skip = self.skip
        warn = self.warn
        kinds = ScanWarningKind
        # tuple.__new__ builds the NamedTuple without the Python-level __new__ frame (hot loop).
        new_entry = tuple.__new__
        entry_cls = ScanEntry
        # Frames: (iterator over sorted children, ancestor key, path prefix for children,
        # whether an include pattern already matched a directory above).
        stack = [(iter(root_children), root_key, out_dir, not select)]
        while stack:
            children, key, out_dir, included = stack[-1]
            for _, entry, is_dir in children:
                name = entry.name
                path = out_dir + name
                if is_dir:
                    if (ex_dname is not None and ex_dname.fullmatch(name)) or (
                        ex_dpath is not None and ex_dpath.fullmatch(path, skip)
                    ):
                        continue  # pruned: never listed
                    if not name.isascii() and not _is_valid_utf8(name):
                        warn(
                            kinds.NON_UTF8_NAME,
                            entry.path,
                            "directory name is not valid UTF-8; skipped with everything inside it"
                            " (rename it to include it)",
                        )
                        continue
                    if self.leaves_tree(entry):
                        continue
                    try:
                        st = entry.stat()
                    except OSError as exc:
                        self.warn_stat_error(entry, exc)
                        continue
                    child_key = (st.st_dev, st.st_ino)
                    if child_key in ancestors:
                        warn(
                            kinds.SYMLINK_LOOP,
                            entry.path,
                            f"leads back to its own ancestor directory {shown(ancestors[child_key])};"
                            " skipped to avoid a loop",
                        )
                        continue
                    grandchildren = self.open_dir(entry.path)
                    if grandchildren is None:
                        continue
                    ancestors[child_key] = entry.path
                    stack.append(
                        (
                            iter(grandchildren),
                            child_key,
                            path + "/",
                            included or _matches(in_dname, in_dpath, name, path, skip),
                        )
                    )
                    break  # descend; this frame's iterator resumes after the subtree
                if filter_files and (
                    (ex_fname is not None and ex_fname.fullmatch(name))
                    or (ex_fpath is not None and ex_fpath.fullmatch(path, skip))
                ):
                    continue
                if not included and not _matches(in_fname, in_fpath, name, path, skip):
                    continue
                if not name.isascii() and not _is_valid_utf8(name):
                    warn(
                        kinds.NON_UTF8_NAME,
                        entry.path,
                        "file name is not valid UTF-8; skipped (rename it to include it)",
                    )
                    continue
                if not follow and entry.is_symlink():
                    warn(
                        kinds.SKIPPED_SYMLINK,
                        entry.path,
                        f"symlink to {_readlink(entry.path)}; skipped because symlinks are not followed",
                    )
                    continue
                if follow == "within" and self.leaves_tree(entry):
                    continue
                try:
                    st = entry.stat()
                except OSError as exc:
                    self.warn_stat_error(entry, exc)
                    continue
                mode = st.st_mode
                if mode & _S_IFMT != _S_IFREG:
                    warn(
                        kinds.SPECIAL_FILE,
                        entry.path,
                        f"is {_special_name(mode)}, not a regular file; skipped",
                    )
                    continue
                yield new_entry(
                    entry_cls,
                    (
                        path,
                        entry.path,
                        st.st_size,
                        mode,
                        st.st_mtime_ns,
                        st.st_ctime_ns,
                        st.st_ino,
                        st.st_dev,
                    ),
                )
            else:
                stack.pop()
                del ancestors[key]


def _special_name(mode: int) -> str:
    if mode & _S_IFMT == _S_IFDIR:
        return "a directory"  # a file replaced by a directory mid-scan
    return _SPECIAL_NAMES.get(mode & _S_IFMT, "a special file")


def _readlink(abspath: str) -> str:
    try:
        return shown(os.readlink(abspath))
    except OSError:
        return "an unknown target"


def scan(
    root: str | os.PathLike[str],
    *,
    prefix: str = "",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    follow_symlinks: SymlinkPolicy = "within",
    on_warning: WarningHandler | None = None,
    include_vcs: bool = False,
) -> Iterator[ScanEntry]:
    """Walk ``root`` and yield its regular files sorted by the UTF-8 bytes of their path.

    ``root`` is a directory (paths relative to it, under ``prefix/`` when a prefix is
    given) or a single regular file (one entry named ``prefix``, else its basename).
    ``include``/``exclude`` are gitignore-like globs matched against the path relative
    to ``root``; see docs/SCANNING.md for the glob, symlink and warning rules. Folders
    named in ``VCS_DIRS`` (``.git`` …) below the root are left out unless ``include_vcs``.
    Skipped items are reported to ``on_warning`` (default: the ``syncengine.scan``
    logger). The root and the patterns are checked when ``scan`` is called; the tree
    is walked lazily as the iterator is consumed.

    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for p in ("a/x", "a-b", "b.tmp"):
    ...     (d / p).parent.mkdir(exist_ok=True); _ = (d / p).write_text(p)
    >>> [e.path for e in scan(d, prefix="data", exclude=["*.tmp"])]
    ['data/a-b', 'data/a/x']

    Raises FileNotFoundError when ``root`` does not exist, PermissionError when the
    root directory cannot be listed, ValueError for a bad prefix or pattern or a root
    that is neither a file nor a directory.
    """
    root_str = os.fspath(root)
    if not isinstance(root_str, str):
        raise TypeError(f"root must be a str path, got {type(root_str).__name__}")
    prefix = _normalize_prefix(prefix)
    include_m = _build_matcher(include, "include")
    exclude_m = _build_matcher([*exclude, *([] if include_vcs else _VCS_PATTERNS)], "exclude")
    handler = _log_warning if on_warning is None else on_warning
    try:
        # The root is always followed, even with follow_symlinks=False.
        st = os.stat(root_str)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "scan root does not exist", root_str) from None
    abspath = _absolute(root_str)
    walk = _Walk(include_m, exclude_m, follow_symlinks, handler, len(prefix) + 1 if prefix else 0)
    if follow_symlinks == "within":
        walk.real_root = os.path.realpath(abspath)

    kind = st.st_mode & _S_IFMT
    if kind == _S_IFDIR:
        children = _list_dir(abspath, follow_symlinks)  # eager: an unreadable root is an error
        return walk.walk(children, (st.st_dev, st.st_ino), abspath, prefix + "/" if prefix else "")
    if kind != _S_IFREG:
        raise ConfigError(
            f"scan root {root_str!r} is {_special_name(st.st_mode)}, not a regular file or directory"
        )
    return _single_file(walk, abspath, st, prefix)


def _single_file(walk: _Walk, abspath: str, st: os.stat_result, prefix: str) -> Iterator[ScanEntry]:
    # Patterns see the basename, the file's path relative to its own directory.
    name = os.path.basename(abspath)
    ex, inc = walk.exclude, walk.include
    if _matches(ex.file_name, ex.file_path, name, name, 0):
        return iter(())
    if not inc.empty and not _matches(inc.file_name, inc.file_path, name, name, 0):
        return iter(())
    if not prefix and not _is_valid_utf8(name):
        walk.warn(
            ScanWarningKind.NON_UTF8_NAME,
            abspath,
            "file name is not valid UTF-8; skipped (rename it or pass a prefix)",
        )
        return iter(())
    entry = ScanEntry(
        prefix or name, abspath, st.st_size, st.st_mode, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev
    )
    return iter((entry,))

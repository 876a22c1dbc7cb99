"""LocalStore: the `ObjectStore` over a local directory, the embedded default.

Layout under ``root`` (docs/STORE.md has the full story)::

    <key>                          an object: its raw bytes, at the key's path
    <dir>/.se-tmp-<hex>            a write in progress (or left by a crash), next to its target
    .se-store/locks/<00..ff>       flock(2) lock stripes, one chosen per key
    .se-store/etags/<h2>/<h30>     ETag sidecars (a cache, validated by inode, size and mtime)
    .se-store/multipart/<id>/      an upload: ``upload`` (its key) and parts ``<nnnnn>-<etag>``

Guarantees: a write is temp file → fsync → rename/link → fsync of the directory, so a
crash leaves the old object or the new one. Conditional writes are atomic against every
process of this host on a local filesystem (not NFS). Every file operation runs in the
store's thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import fcntl
import functools
import itertools
import os
import re
import shutil
import stat
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final, NamedTuple, ParamSpec, TypeVar

import blake3
import msgspec

from syncengine.durable import fsync_dir
from syncengine.errors import (
    BodySizeMismatch,
    ConfigError,
    InvalidKey,
    InvalidPart,
    ObjectNotFound,
    PreconditionFailed,
    StoreClosed,
    UploadNotFound,
)
from syncengine.store.base import (
    RESERVED_PREFIX,
    S3_SIZE_LIMITS,
    Body,
    HashedParts,
    ObjectInfo,
    ObjectStore,
    PartInfo,
    StoreCapabilities,
    StoreContext,
    UploadInfo,
    body_size,
    check_range,
    check_size,
    is_valid_part,
    refuse_links,
    validate_key,
    validate_prefix,
)

__all__ = ["LocalStore"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

TEMP_PREFIX: Final = RESERVED_PREFIX + "tmp-"
_INTERNAL: Final = RESERVED_PREFIX + "store"
_IO_CHUNK: Final = 8 << 20
_READ_CHUNK: Final = 4 << 20
_LIST_PAGE: Final = 1000
_DELETE_BATCH: Final = 1000
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}\Z")
_PART_FILE = re.compile(r"(\d{5})-([0-9a-f]{64})\Z")
_UPLOAD_META: Final = "upload"
# errnos meaning "this filesystem has no hard links": fall back to check-then-rename.
_NO_LINK_ERRNOS: Final = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS})

# A sidecar: (st_ino, st_size, st_mtime_ns, etag) of the object file it describes.
_Sidecar = tuple[int, int, int, str]
_encode_sidecar = msgspec.msgpack.Encoder().encode
_decode_sidecar = msgspec.msgpack.Decoder(_Sidecar).decode


class _UploadMeta(msgspec.Struct, frozen=True):
    key: str
    initiated: float


_encode_meta = msgspec.msgpack.Encoder().encode
_decode_meta = msgspec.msgpack.Decoder(_UploadMeta).decode


class _Written(NamedTuple):
    """A complete, fsynced temp file waiting to become an object."""

    path: str
    size: int
    etag: str
    ino: int
    mtime_ns: int


def _hasher() -> blake3.blake3:
    return blake3.blake3(max_threads=blake3.blake3.AUTO)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _write_body(fd: int, body: Body) -> tuple[int, str]:
    """Write ``body`` to ``fd`` while hashing it; return (size, BLAKE3 hex)."""
    if isinstance(body, HashedParts):  # the producer hashed it already (a pack)
        for part in body.parts:
            _write_all(fd, part)
        return body.size, body.blake3.hex()
    h = _hasher()
    if isinstance(body, bytes | bytearray | memoryview):
        mv = memoryview(body).cast("B")
        for off in range(0, len(mv), _IO_CHUNK):
            piece = mv[off : off + _IO_CHUNK]
            h.update(piece)
            _write_all(fd, piece)
        return len(mv), h.hexdigest()
    n = 0
    for chunk in body.chunks():
        piece = memoryview(chunk).cast("B")
        h.update(piece)
        _write_all(fd, piece)
        n += len(piece)
    if n != body.size:
        raise BodySizeMismatch(f"the body produced {n} bytes but declared {body.size}; nothing was written")
    return n, h.hexdigest()


def _pread_range(fd: int, start: int, end: int) -> bytes:
    parts: list[bytes] = []
    pos = start
    while pos < end:
        b = os.pread(fd, min(end - pos, 1 << 30), pos)
        if not b:
            break
        parts.append(b)
        pos += len(b)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _preadinto(fd: int, buf: memoryview, pos: int) -> int:
    """Fills ``buf`` from ``pos`` unless the file ends first; the bytes read."""
    n = 0
    while n < len(buf):
        got = os.preadv(fd, [buf[n:]], pos + n)
        if not got:
            break
        n += got
    return n


def _hash_fd(fd: int, size: int) -> str:
    h = _hasher()
    pos = 0
    while pos < size:
        b = os.pread(fd, min(_IO_CHUNK, size - pos), pos)
        if not b:
            break
        h.update(b)
        pos += len(b)
    return h.hexdigest()


def _unlink_quiet(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _take(it: Iterator[_T], n: int) -> list[_T]:
    out: list[_T] = []
    for x in it:
        out.append(x)
        if len(out) == n:
            break
    return out


class _ConcatFiles:
    """The parts of a multipart upload read back to back (a `BodySource`)."""

    def __init__(self, paths: Sequence[str], size: int) -> None:
        self.paths = paths
        self.size = size

    def chunks(self) -> Iterator[bytes]:
        for p in self.paths:
            with open(p, "rb", buffering=0) as f:
                while b := f.read(_IO_CHUNK):
                    yield b


class _LocalReader:
    """An open object file; reads happen in the store's pool, in ``_READ_CHUNK`` pieces."""

    def __init__(self, store: LocalStore, fd: int, info: ObjectInfo, range: tuple[int, int] | None) -> None:
        self._store = store
        self._fd = fd
        self._info = info
        start, end = range if range is not None else (0, info.size)
        self._pos = start
        self._end = min(end, info.size)

    @property
    def info(self) -> ObjectInfo:
        return self._info

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self._pos < self._end:
            b = await self._store._run(os.pread, self._fd, min(_READ_CHUNK, self._end - self._pos), self._pos)
            if not b:
                return
            self._pos += len(b)
            yield b

    async def read(self) -> bytes:
        if self._pos >= self._end:
            return b""
        b = await self._store._run(_pread_range, self._fd, self._pos, self._end)
        self._pos += len(b)
        return b

    async def readinto(self, buf: memoryview) -> int:
        want = min(len(buf), self._end - self._pos)
        if want <= 0:
            return 0
        n = await self._store._run(_preadinto, self._fd, buf[:want], self._pos)
        self._pos += n
        return n


class LocalStore(StoreContext):
    """An object store in a local directory (created on first write).

    >>> import asyncio, tempfile
    >>> async def demo(root: str) -> bytes:
    ...     async with LocalStore(root) as store:
    ...         await store.put("a/b", b"hello")
    ...         return await store.get("a/b", range=(1, 3))
    >>> asyncio.run(demo(tempfile.mkdtemp()))
    b'el'

    ``max_workers`` bounds the threads doing file I/O (and so the concurrent writes).
    """

    def __init__(self, root: str | os.PathLike[str], *, max_workers: int = 16) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.capabilities = StoreCapabilities(
            conditional_put=True,
            conditional_cas=True,
            conditional_across_hosts=False,
            ranged_get=True,
            key_prefix_overlap=False,
            **S3_SIZE_LIMITS,  # type: ignore[arg-type]
        )
        self._internal = f"{self.root}/{_INTERNAL}"
        self._multipart = f"{self._internal}/multipart"
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="syncengine-localstore")
        self._closed = False
        self._ready = False
        self._ready_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalStore({self.root!r})"

    # ---- plumbing -------------------------------------------------------------------------

    async def _run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        loop = asyncio.get_running_loop()
        try:
            if self._closed:
                raise RuntimeError
            fut = loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        except RuntimeError:  # the pool refuses work once shut down
            raise StoreClosed(f"{self!r} is closed; open a new store to keep using it") from None
        return await fut

    def _ensure_ready(self) -> None:
        if self._ready:
            return
        with self._ready_lock:
            for sub in ("locks", "etags", "multipart"):
                os.makedirs(f"{self._internal}/{sub}", exist_ok=True)
            self._ready = True

    def _path(self, key: str) -> str:
        """The file of `key`, once every folder between the root and it is checked to be a
        real folder (`_refuse_links`)."""
        path = f"{self.root}/{key}"
        self._refuse_links(path)
        return path

    def _refuse_links(self, path: str, *, itself: bool = False) -> None:
        refuse_links(self.root, path, itself=itself)

    @staticmethod
    def _key_hash(key: str) -> str:
        return blake3.blake3(key.encode("utf-8")).hexdigest(length=16)

    def _overlap(self, key: str) -> InvalidKey:
        return InvalidKey(
            key,
            f"{self!r} cannot hold an object that is also a prefix of another object's key "
            "(like 'a' and 'a/b'): a file cannot be a directory",
        )

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        """Exclusive flock on the key's stripe: serializes every mutation of the key on this host."""
        path = f"{self._internal}/locks/{self._key_hash(key)[:2]}"
        self._refuse_links(path, itself=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by close (or by the kernel if we die)
            yield
        finally:
            os.close(fd)

    def _ensure_dir(self, d: str, key: str) -> None:
        """Create ``d`` and missing parents, fsyncing each new entry's parent."""
        try:
            st = os.stat(d)
        except FileNotFoundError:
            pass
        except NotADirectoryError:
            raise self._overlap(key) from None
        else:
            if stat.S_ISDIR(st.st_mode):
                return
            raise self._overlap(key)
        parent = os.path.dirname(d)
        self._ensure_dir(parent, key)
        try:
            os.mkdir(d)
        except FileExistsError:
            if not os.path.isdir(d):
                raise self._overlap(key) from None
            return
        except NotADirectoryError:
            raise self._overlap(key) from None
        fsync_dir(parent)

    def _write_temp(self, d: str, body: Body, key: str, *, make_dir: bool) -> _Written:
        """Write ``body`` to a fresh temp file in ``d`` and fsync it."""
        for attempt in range(8):
            tmp = f"{d}/{TEMP_PREFIX}{uuid.uuid4().hex}"
            try:
                if make_dir:
                    self._ensure_dir(d, key)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
                break
            except FileNotFoundError:
                # A concurrent delete pruned an (empty) directory of the path while it was
                # being made (a parent between its mkdir and the child's) or before the open.
                if not make_dir or attempt == 7:
                    raise
        try:
            try:
                size, etag = _write_body(fd, body)
                os.fsync(fd)
                st = os.fstat(fd)
            finally:
                os.close(fd)
        except BaseException:
            _unlink_quiet(tmp)
            raise
        return _Written(tmp, size, etag, st.st_ino, st.st_mtime_ns)

    # ---- ETag sidecars --------------------------------------------------------------------

    def _sidecar_path(self, key: str) -> str:
        h = self._key_hash(key)
        path = f"{self._internal}/etags/{h[:2]}/{h[2:]}"
        self._refuse_links(path)
        return path

    def _read_sidecar(self, key: str) -> _Sidecar | None:
        try:
            fd = os.open(self._sidecar_path(key), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            rec: _Sidecar = _decode_sidecar(os.read(fd, 4096))
        except (OSError, msgspec.DecodeError):
            return None  # torn by a crash (sidecars are not fsynced): recompute
        finally:
            os.close(fd)
        return rec

    def _write_sidecar(self, key: str, rec: _Sidecar) -> None:
        """Best effort: the sidecar is a cache, and the object is already committed."""
        path = self._sidecar_path(key)
        d = os.path.dirname(path)
        tmp = f"{d}/{TEMP_PREFIX}{uuid.uuid4().hex}"
        try:
            os.makedirs(d, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            try:
                _write_all(fd, memoryview(_encode_sidecar(rec)))
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError:
            _unlink_quiet(tmp)

    def _etag_of(self, key: str, fd: int, st: os.stat_result) -> str:
        """The ETag of the open object file: the sidecar's if it describes this very file."""
        rec = self._read_sidecar(key)
        # Objects are never modified in place (only replaced by rename), so a sidecar naming
        # this inode, size and mtime was computed from these bytes.
        if rec is not None and rec[:3] == (st.st_ino, st.st_size, st.st_mtime_ns):
            return rec[3]
        etag = _hash_fd(fd, st.st_size)
        self._write_sidecar(key, (st.st_ino, st.st_size, st.st_mtime_ns, etag))
        return etag

    # ---- reads ----------------------------------------------------------------------------

    def _open_object(self, key: str) -> tuple[int, os.stat_result]:
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(key, repr(self)) from None
        except OSError as e:
            if e.errno == errno.ELOOP:  # the object itself is a link
                self._refuse_links(self._path(key), itself=True)
            raise
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if not stat.S_ISREG(st.st_mode):  # a directory: 'key' is only a prefix here
            os.close(fd)
            raise ObjectNotFound(key, repr(self))
        return fd, st

    def _get_sync(self, key: str, range: tuple[int, int] | None, max_bytes: int | None) -> bytes:
        fd, st = self._open_object(key)
        try:
            start, end = range if range is not None else (0, st.st_size)
            end = min(end, st.st_size)
            check_size(key, max(0, end - start), max_bytes)  # from fstat, before reading
            return _pread_range(fd, start, end)
        finally:
            os.close(fd)

    def _open_with_info(self, key: str) -> tuple[int, ObjectInfo]:
        fd, st = self._open_object(key)
        try:
            etag = self._etag_of(key, fd, st)
        except BaseException:
            os.close(fd)
            raise
        return fd, ObjectInfo(key, st.st_size, etag, st.st_mtime_ns / 1e9)

    def _head_sync(self, key: str) -> ObjectInfo:
        fd, info = self._open_with_info(key)
        os.close(fd)
        return info

    async def get(
        self, key: str, range: tuple[int, int] | None = None, *, max_bytes: int | None = None
    ) -> bytes:
        validate_key(key)
        check_range(range)
        return await self._run(self._get_sync, key, range, max_bytes)

    @contextlib.asynccontextmanager
    async def open_read(self, key: str, range: tuple[int, int] | None = None) -> AsyncIterator[_LocalReader]:
        validate_key(key)
        check_range(range)
        fd, info = await self._run(self._open_with_info, key)
        try:
            yield _LocalReader(self, fd, info, range)
        finally:
            try:
                fut = asyncio.get_running_loop().run_in_executor(self._pool, os.close, fd)
            except RuntimeError:  # the pool is shut down (store closed): close here
                os.close(fd)
            else:
                await asyncio.shield(fut)  # the fd is closed even if we are cancelled

    async def head(self, key: str) -> ObjectInfo:
        validate_key(key)
        return await self._run(self._head_sync, key)

    # ---- writes ---------------------------------------------------------------------------

    def _commit(self, key: str, w: _Written, if_none_match: bool, if_match: str | None) -> ObjectInfo:
        """Make the temp file ``w`` the object ``key``, under the key's lock and conditions."""
        final = self._path(key)
        try:
            with self._key_lock(key):
                if if_none_match:
                    self._link_new(key, w.path, final)
                else:
                    if if_match is not None:
                        self._check_etag(key, final, if_match)
                    try:
                        os.rename(w.path, final)
                    except IsADirectoryError:
                        raise self._overlap(key) from None
                self._write_sidecar(key, (w.ino, w.size, w.mtime_ns, w.etag))
        finally:
            _unlink_quiet(w.path)  # the link case (or a failure) leaves the temp name behind
        fsync_dir(os.path.dirname(final))
        return ObjectInfo(key, w.size, w.etag, w.mtime_ns / 1e9)

    def _link_new(self, key: str, tmp: str, final: str) -> None:
        """Create-if-absent: link(2) fails if ``final`` exists, atomically for every process."""
        exists = PreconditionFailed(key, "an object with this key already exists (create-if-absent)")
        try:
            os.link(tmp, final)
        except FileExistsError:
            if os.path.isdir(final):
                raise self._overlap(key) from None
            raise exists from None
        except OSError as e:
            if e.errno not in _NO_LINK_ERRNOS:
                raise
            # No hard links here (FAT, some FUSE/SMB mounts): check-then-rename under the key
            # lock is atomic only among syncengine processes of this host.
            if os.path.lexists(final):
                raise exists from None
            os.rename(tmp, final)

    def _check_etag(self, key: str, final: str, if_match: str) -> None:
        try:
            fd = os.open(final, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise PreconditionFailed(key, "it does not exist (if_match needs an existing object)") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise PreconditionFailed(key, "it does not exist (if_match needs an existing object)")
            current = self._etag_of(key, fd, st)
        finally:
            os.close(fd)
        if current != if_match:
            raise PreconditionFailed(
                key, f"its ETag is {current!r}, not {if_match!r} (another writer changed it)"
            )

    def _put_sync(self, key: str, body: Body, if_none_match: bool, if_match: str | None) -> ObjectInfo:
        self._ensure_ready()
        w = self._write_temp(os.path.dirname(self._path(key)), body, key, make_dir=True)
        return self._commit(key, w, if_none_match, if_match)

    def _check_put(self, key: str, body: Body, if_none_match: bool, if_match: str | None) -> None:
        validate_key(key)
        if if_none_match and if_match is not None:
            raise ConfigError("put: if_none_match and if_match cannot be combined")
        size = body_size(body)
        if size > self.capabilities.max_put_size:
            raise ConfigError(
                f"put {key!r}: {size} bytes exceed max_put_size ({self.capabilities.max_put_size}); "
                "use a multipart upload"
            )

    async def put(
        self, key: str, body: Body, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        self._check_put(key, body, if_none_match, if_match)
        return await self._run(self._put_sync, key, body, if_none_match, if_match)

    def _delete_sync(self, keys: Sequence[str]) -> None:
        self._ensure_ready()
        dirs: set[str] = set()
        for key in keys:
            final = self._path(key)
            with self._key_lock(key):
                try:
                    os.unlink(final)
                except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                    continue  # absent (a directory is a prefix, not an object)
                except PermissionError:
                    if os.path.isdir(final):  # macOS reports EPERM for unlink(directory)
                        continue
                    raise
                _unlink_quiet(self._sidecar_path(key))
            dirs.add(os.path.dirname(final))
        for emptied in sorted(dirs, key=len, reverse=True):
            # Deepest first; empty directories go, so the tree does not fill with husks.
            d = emptied
            while d != self.root:
                try:
                    os.rmdir(d)
                except OSError:
                    break
                d = os.path.dirname(d)
            with contextlib.suppress(FileNotFoundError):
                fsync_dir(d)

    async def delete(self, keys: Sequence[str]) -> None:
        if isinstance(keys, str):
            raise TypeError("delete takes a sequence of keys, not one str")
        for key in keys:
            validate_key(key)
        for i in range(0, len(keys), _DELETE_BATCH):
            await self._run(self._delete_sync, keys[i : i + _DELETE_BATCH])

    # ---- listing --------------------------------------------------------------------------

    def _walk(self, head: str, partial: str) -> Generator[ObjectInfo, None, None]:
        """Objects under ``head/`` whose next part starts with ``partial``, in key order."""

        def children(d: str, name_prefix: str) -> Iterator[tuple[str, str, bool]]:
            found: list[tuple[str, str, bool]] = []
            try:
                with os.scandir(d) as it:
                    for e in it:
                        name = e.name
                        if not name.startswith(name_prefix) or not is_valid_part(name):
                            continue  # store internals, temp files, names that are no key
                        if e.is_dir(follow_symlinks=False):
                            found.append((name + "/", name, True))
                        elif e.is_file(follow_symlinks=False):
                            found.append((name, name, False))
            except (FileNotFoundError, NotADirectoryError):
                pass
            # A directory sorts as name + "/": 'a-b' (0x2d) comes before 'a/x' (0x2f).
            found.sort()
            return iter(found)

        start = f"{self.root}/{head}" if head else self.root
        if head:
            self._refuse_links(start, itself=True)
        stack = [(start, f"{head}/" if head else "", children(start, partial))]
        while stack:
            d, key_prefix, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                continue
            _, name, is_dir = nxt
            path = f"{d}/{name}"
            if is_dir:
                stack.append((path, f"{key_prefix}{name}/", children(path, "")))
                continue
            key = key_prefix + name
            try:
                fd, info = self._open_with_info(key)
            except ObjectNotFound:
                continue  # deleted since the directory was read
            os.close(fd)
            yield info

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        head, partial = validate_prefix(prefix)
        walker = self._walk(head, partial)
        try:
            while True:
                page = await self._run(_take, walker, _LIST_PAGE)
                for info in page:
                    yield info
                if len(page) < _LIST_PAGE:
                    return
        finally:
            # Cancelled mid-page, the walker may still be running in its thread; then it is
            # simply dropped.
            with contextlib.suppress(ValueError):
                walker.close()

    # ---- multipart ------------------------------------------------------------------------

    def _upload_dir(self, key: str, upload_id: str) -> str:
        if not isinstance(upload_id, str) or not _UPLOAD_ID.match(upload_id):
            raise UploadNotFound(key, str(upload_id))
        d = f"{self._multipart}/{upload_id}"
        self._refuse_links(d, itself=True)
        try:
            fd = os.open(f"{d}/{_UPLOAD_META}", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise UploadNotFound(key, upload_id) from None
        try:
            meta = _decode_meta(os.read(fd, 1 << 16))
        finally:
            os.close(fd)
        if meta.key != key:
            raise UploadNotFound(key, upload_id)
        return d

    def _create_multipart_sync(self, key: str) -> str:
        self._ensure_ready()
        upload_id = uuid.uuid4().hex
        # Build the upload directory under a temp name and rename it in: it appears whole.
        tmp = f"{self._multipart}/{TEMP_PREFIX}{uuid.uuid4().hex}"
        os.mkdir(tmp)
        try:
            w = self._write_temp(tmp, _encode_meta(_UploadMeta(key, time.time())), key, make_dir=False)
            os.rename(w.path, f"{tmp}/{_UPLOAD_META}")
            fsync_dir(tmp)
            os.rename(tmp, f"{self._multipart}/{upload_id}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(self._multipart)
        return upload_id

    async def create_multipart(self, key: str) -> str:
        validate_key(key)
        return await self._run(self._create_multipart_sync, key)

    @staticmethod
    def _part_versions(d: str) -> dict[int, tuple[int, str, int, str]]:
        """part number → (mtime_ns, file name, size, etag) of its newest upload."""
        best: dict[int, tuple[int, str, int, str]] = {}
        with os.scandir(d) as it:
            for e in it:
                m = _PART_FILE.match(e.name)
                if m is None:
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                n = int(m.group(1))
                cand = (st.st_mtime_ns, e.name, st.st_size, m.group(2))
                if n not in best or cand[:2] > best[n][:2]:
                    best[n] = cand
        return best

    def _upload_part_sync(self, key: str, upload_id: str, part_number: int, body: Body) -> str:
        d = self._upload_dir(key, upload_id)
        try:
            w = self._write_temp(d, body, key, make_dir=False)
        except FileNotFoundError:
            raise UploadNotFound(key, upload_id) from None
        name = f"{part_number:05d}-{w.etag}"
        try:
            os.rename(w.path, f"{d}/{name}")
        except FileNotFoundError:  # aborted (or completed) meanwhile
            _unlink_quiet(w.path)
            raise UploadNotFound(key, upload_id) from None
        fsync_dir(d)
        # Uploading a part number again replaces it: drop older versions (the newest by
        # (mtime, name) wins, also when two uploads of one number race).
        mine = (w.mtime_ns, name)
        with contextlib.suppress(FileNotFoundError), os.scandir(d) as it:
            for e in it:
                if e.name != name and e.name.startswith(name[:6]) and _PART_FILE.match(e.name):
                    with contextlib.suppress(FileNotFoundError):
                        if (e.stat(follow_symlinks=False).st_mtime_ns, e.name) < mine:
                            os.unlink(e.path)
        return w.etag

    async def upload_part(self, key: str, upload_id: str, part_number: int, body: Body) -> str:
        validate_key(key)
        caps = self.capabilities
        if not 1 <= part_number <= caps.max_parts:
            raise InvalidPart(f"part number {part_number} is outside 1..{caps.max_parts}")
        size = body_size(body)
        if size > caps.max_part_size:
            raise InvalidPart(
                f"part {part_number} is {size} bytes, above max_part_size ({caps.max_part_size})"
            )
        return await self._run(self._upload_part_sync, key, upload_id, part_number, body)

    def _list_parts_sync(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        d = self._upload_dir(key, upload_id)
        try:
            versions = self._part_versions(d)
        except FileNotFoundError:
            raise UploadNotFound(key, upload_id) from None
        return [PartInfo(n, v[3], v[2]) for n, v in sorted(versions.items())]

    async def list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        validate_key(key)
        return await self._run(self._list_parts_sync, key, upload_id)

    def _complete_sync(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[tuple[int, str]],
        if_none_match: bool,
        if_match: str | None,
    ) -> ObjectInfo:
        self._ensure_ready()
        d = self._upload_dir(key, upload_id)
        paths: builtins.list[str] = []
        total = 0
        for i, (n, etag) in enumerate(parts):
            p = f"{d}/{n:05d}-{etag}"
            try:
                size = os.stat(p).st_size
            except FileNotFoundError:
                if not os.path.isdir(d):
                    raise UploadNotFound(key, upload_id) from None
                raise InvalidPart(f"part {n} with ETag {etag!r} was not uploaded to {upload_id!r}") from None
            if i < len(parts) - 1 and size < self.capabilities.min_part_size:
                raise InvalidPart(
                    f"part {n} is {size} bytes; every part but the last needs at least "
                    f"{self.capabilities.min_part_size}"
                )
            paths.append(p)
            total += size
        try:
            w = self._write_temp(
                os.path.dirname(self._path(key)), _ConcatFiles(paths, total), key, make_dir=True
            )
        except (FileNotFoundError, BodySizeMismatch):  # parts vanished: aborted meanwhile
            raise UploadNotFound(key, upload_id) from None
        info = self._commit(key, w, if_none_match, if_match)
        self._remove_upload(d)
        return info

    async def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: Sequence[tuple[int, str]],
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> ObjectInfo:
        validate_key(key)
        if if_none_match and if_match is not None:
            raise ConfigError("complete_multipart: if_none_match and if_match cannot be combined")
        if not parts:
            raise InvalidPart("complete_multipart needs at least one part")
        numbers = [n for n, _ in parts]
        if any(b <= a for a, b in itertools.pairwise(numbers)):
            raise InvalidPart(f"parts must be in strictly ascending part-number order, got {numbers}")
        if numbers[0] < 1 or numbers[-1] > self.capabilities.max_parts:
            raise InvalidPart(f"part numbers must lie in 1..{self.capabilities.max_parts}")
        return await self._run(self._complete_sync, key, upload_id, list(parts), if_none_match, if_match)

    def _remove_upload(self, d: str) -> None:
        # Rename first: an upload_part racing with us then fails cleanly instead of
        # recreating files inside a half-deleted directory.
        trash = f"{self._multipart}/{TEMP_PREFIX}{uuid.uuid4().hex}"
        try:
            os.rename(d, trash)
        except FileNotFoundError:
            return
        fsync_dir(self._multipart)
        shutil.rmtree(trash, ignore_errors=True)

    def _abort_sync(self, key: str, upload_id: str) -> None:
        self._remove_upload(self._upload_dir(key, upload_id))

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        validate_key(key)
        await self._run(self._abort_sync, key, upload_id)

    def _list_uploads_sync(self, prefix: str) -> builtins.list[UploadInfo]:
        out: builtins.list[UploadInfo] = []
        try:
            it = os.scandir(self._multipart)
        except FileNotFoundError:
            return out
        with it:
            for e in it:
                if not _UPLOAD_ID.match(e.name):
                    continue
                try:
                    with open(f"{e.path}/{_UPLOAD_META}", "rb") as f:
                        meta = _decode_meta(f.read())
                except (OSError, msgspec.DecodeError):
                    continue  # removed meanwhile
                if meta.key.startswith(prefix):
                    out.append(UploadInfo(meta.key, e.name, meta.initiated))
        out.sort(key=lambda u: (u.key, u.initiated, u.upload_id))
        return out

    async def list_multipart_uploads(self, prefix: str = "") -> builtins.list[UploadInfo]:
        validate_prefix(prefix)
        return await self._run(self._list_uploads_sync, prefix)

    # ---- maintenance ----------------------------------------------------------------------

    def _cleanup_sync(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        removed = 0
        for d, dirnames, filenames in os.walk(self.root):
            for name in [n for n in dirnames if n.startswith(TEMP_PREFIX)]:
                dirnames.remove(name)
                path = f"{d}/{name}"
                with contextlib.suppress(FileNotFoundError):
                    if os.lstat(path).st_mtime < cutoff:
                        shutil.rmtree(path, ignore_errors=True)
                        removed += 1
            for name in filenames:
                if name.startswith(TEMP_PREFIX):
                    path = f"{d}/{name}"
                    with contextlib.suppress(FileNotFoundError):
                        if os.lstat(path).st_mtime < cutoff:
                            os.unlink(path)
                            removed += 1
        return removed

    async def cleanup_temp(self, older_than: float = 86_400.0) -> int:
        """Delete temp files and directories (``.se-tmp-*``) older than ``older_than`` seconds.

        They are left only by crashed or killed writers; a live writer's temp file is newer
        than any sane ``older_than``, and if removed anyway that write fails, it is not torn.
        Walks the whole tree: a maintenance task (e.g. before garbage collection), not a
        per-write cost. Returns how many entries were removed. Abandoned multipart uploads
        are not touched: find them with ``list_multipart_uploads`` and abort them.
        """
        if older_than < 0:
            raise ConfigError(f"older_than must be >= 0 seconds, got {older_than}")
        return await self._run(self._cleanup_sync, older_than)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # In-flight operations finish in their threads; nothing new can start.
        self._pool.shutdown(wait=False)


def _structural_check(store: LocalStore) -> ObjectStore:
    return store  # mypy proves LocalStore satisfies the ObjectStore protocol

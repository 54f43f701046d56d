"""A local, append-only spool for audit records that could not reach Redis (pure file I/O).

When Redis is briefly away, `AuditLog` writes the record here instead, and a background replayer
pushes it into the stream once Redis answers again. The spool is what lets "audit before send" hold
through a Redis restart: a record is only reported as accepted once it is fsync'd on local disk.

Layout of `<PANEL_DATA_DIR>/spool/`:

    w-<time_ns>-<pid>-<random>.jsonl   a writer's file; the writing process holds a flock on it
    r-<time_ns>-<pid>-<random>.jsonl   a file claimed for replay by the process holding its flock

Several processes on one host share the directory (`serve --workers N`). Each process writes its own
file, so lines of different processes never interleave. Every file is owned through an exclusive
`flock`, which the kernel drops when the owner dies: a file whose lock can be taken has no live owner.
A replayer claims such a file by renaming it while holding the lock, so two replayers never both take
it, and it deletes a file only after every record in it is confirmed in the stream. The `time_ns`
prefix survives the rename, so sorting names keeps files in the order they were started.

Each line is one JSON object of string fields, written with one `write` and fsync'd before `append`
returns. A crash in the middle of a write can leave a torn last line (no newline, or JSON cut short):
that append never returned, so nobody was told the record was kept; replay skips it and logs it.
A failed write is rolled back (truncated) so the next line always starts on a clean boundary.

The size bound (`max_bytes`, all files together) is soft across processes: two workers appending at
the same instant may each pass the check, overshooting it by at most one record each.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import heapq
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import Code, Unavailable

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# Room for a few records: a full spool cannot keep a send, so the replica is not ready without it.
SPOOL_HEADROOM = 16 * 1024
_WRITING = "w-"
_CLAIMED = "r-"
_SUFFIX = ".jsonl"
# Disk full or over quota: the spool cannot grow, which the agent sees as "spool full".
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


class SpoolError(Unavailable):
    """The record could not be kept on local disk either: the send must be refused (HTTP 503)."""


class SpoolFull(SpoolError):
    """The spool reached its size bound, or the disk is full."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(Code.AUDIT_SPOOL_FULL)
        self.detail = detail

    def __str__(self) -> str:
        return f"audit spool full: {self.detail}" if self.detail else "audit spool full"


class SpoolUnavailable(SpoolError):
    """The spool directory cannot be written (read-only, missing permissions, I/O error)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(Code.AUDIT_UNAVAILABLE)
        self.detail = detail

    def __str__(self) -> str:
        return f"audit spool unavailable: {self.detail}" if self.detail else "audit spool unavailable"


@dataclass(frozen=True, slots=True)
class SpoolDepth:
    files: int
    records: int
    bytes: int


@dataclass(slots=True)
class ClaimedFile:
    """One spool file held (locked and renamed) by a claim, with the records read from it."""

    path: Path
    fd: int
    records: list[dict[str, str]]
    skipped: int = 0


@dataclass(slots=True)
class Claim:
    """Spool files taken for replay. `commit()` deletes them; `release()` (or leaving the `with`) keeps
    them on disk for the next attempt. Either way the locks are dropped."""

    directory: Path
    files: list[ClaimedFile] = field(default_factory=list)
    _done: bool = False

    @property
    def records(self) -> list[dict[str, str]]:
        """Every record, file by file in the order the files were started, each file in append order."""
        return [record for claimed in self.files for record in claimed.records]

    def merged(self, key: Callable[[dict[str, str]], Any]) -> list[dict[str, str]]:
        """Records of all files merged by `key` (e.g. acceptance time); each file keeps its own order."""
        return list(heapq.merge(*(claimed.records for claimed in self.files), key=key))

    @property
    def skipped(self) -> int:
        return sum(claimed.skipped for claimed in self.files)

    def commit(self) -> None:
        """Every record is confirmed elsewhere: delete the files, then drop their locks."""
        if self._done:
            return
        self._done = True
        for claimed in self.files:
            with contextlib.suppress(FileNotFoundError):
                claimed.path.unlink()
        _fsync_dir(self.directory)
        self._close()

    def release(self) -> None:
        """Keep the files for a later attempt (they stay claimable by anyone) and drop the locks."""
        if self._done:
            return
        self._done = True
        self._close()

    def _close(self) -> None:
        for claimed in self.files:
            with contextlib.suppress(OSError):
                os.close(claimed.fd)

    def __enter__(self) -> Claim:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


@dataclass(slots=True)
class _Active:
    path: Path
    fd: int
    size: int


class Spool:
    """The spool directory of one process. Thread-safe: `AuditLog` calls it through `asyncio.to_thread`."""

    def __init__(self, directory: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._active: _Active | None = None
        # name -> (inode, size, newline count): files only grow, so depth() reads each byte once
        self._line_counts: dict[str, tuple[int, int, int]] = {}

    # --- writing ----------------------------------------------------------------------------------

    def append(self, item: Mapping[str, str]) -> None:
        """Keep one record durably (written and fsync'd) or raise `SpoolFull` / `SpoolUnavailable`."""
        self.append_many([item])

    def append_many(self, items: Sequence[Mapping[str, str]]) -> None:
        """Keep several records with one write and one fsync; all of them or none."""
        if not items:
            return
        data = b"".join(_encode(item) for item in items)
        with self._lock:
            try:
                used = self._used_bytes()
            except OSError as error:
                raise _spool_error(error) from error
            if used + len(data) > self.max_bytes:
                raise SpoolFull(f"{used} of {self.max_bytes} bytes used")
            try:
                active = self._active_file()
            except OSError as error:
                raise _spool_error(error) from error
            try:
                _write_all(active.fd, data)
                os.fsync(active.fd)
            except OSError as error:
                self._roll_back(active)
                raise _spool_error(error) from error
            active.size += len(data)

    def _roll_back(self, active: _Active) -> None:
        """Cut a half-written line off, so the next record starts on a line of its own."""
        try:
            os.ftruncate(active.fd, active.size)
            os.fsync(active.fd)
        except OSError:
            # Could not cut it: abandon this file (its torn tail is skipped at replay) and start another.
            log.error("spool file %s could not be rolled back; starting a new one", active.path.name)
            self._seal()

    def _active_file(self) -> _Active:
        if self._active is not None:
            return self._active
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            path = self.directory / f"{_WRITING}{_new_name()}"
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            # A replayer may have locked (or already claimed) the brand-new file between open and flock:
            # then it is not ours to write; try another name.
            if _lock_current(path, fd):
                _fsync_dir(self.directory)
                self._active = _Active(path, fd, 0)
                return self._active
            os.close(fd)
        raise OSError(errno.EAGAIN, "could not take a spool file", str(self.directory))

    def _seal(self) -> None:
        """Stop writing the current file and drop its lock, so a replayer can claim it."""
        active, self._active = self._active, None
        if active is not None:
            with contextlib.suppress(OSError):
                os.close(active.fd)

    def close(self) -> None:
        """Close this process's file (it stays on disk, to be replayed by whoever claims it next)."""
        with self._lock:
            self._seal()

    def can_take(self, headroom: int = SPOOL_HEADROOM) -> bool:
        """Whether a record would be kept now: the directory is writable and `headroom` bytes are free."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if not os.access(self.directory, os.W_OK | os.X_OK):
                return False
            return self._used_bytes() + headroom <= self.max_bytes
        except OSError:
            return False

    def _used_bytes(self) -> int:
        return sum(size for _, size in self._files())

    def _files(self) -> list[tuple[Path, int]]:
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            if entry.name.startswith((_WRITING, _CLAIMED)) and entry.name.endswith(_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    found.append((Path(entry.path), entry.stat().st_size))
        return sorted(found, key=lambda item: item[0].name[2:])

    # --- reading ----------------------------------------------------------------------------------

    def has_files(self) -> bool:
        """Anything on disk, this process's own file included (cheap: one directory listing)."""
        return bool(self._files())

    def claim(self) -> Claim:
        """Take every spool file that no live process holds (this process's own file included) and read it.

        Files held by another live process are left alone: that process replays them itself.
        """
        with self._lock:
            self._seal()
        claim = Claim(self.directory)
        try:
            for path, _ in self._files():
                claimed = self._claim_file(path)
                if claimed is not None:
                    claim.files.append(claimed)
        except BaseException:
            claim.release()
            raise
        if claim.files:
            _fsync_dir(self.directory)
        return claim

    def _claim_file(self, path: Path) -> ClaimedFile | None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None  # claimed and replayed by someone else meanwhile
        if not _lock_current(path, fd):
            os.close(fd)
            return None  # a live owner: a writer, or a replayer at work
        try:
            stamp = path.name[len(_WRITING) :].split("-", 1)[0]
            target = self.directory / f"{_CLAIMED}{stamp}-{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}"
            os.rename(path, target)
            records, skipped = _parse(_read_all(fd), target.name)
        except BaseException:
            os.close(fd)
            raise
        return ClaimedFile(target, fd, records, skipped)

    def depth(self) -> SpoolDepth:
        """Files, records (lines) and bytes on disk, for metrics."""
        files = self._files()
        records = 0
        seen: dict[str, tuple[int, int, int]] = {}
        for path, _ in files:
            try:
                records += self._count_lines(path, seen)
            except FileNotFoundError:
                continue
        self._line_counts = seen
        return SpoolDepth(files=len(files), records=records, bytes=sum(size for _, size in files))

    def _count_lines(self, path: Path, seen: dict[str, tuple[int, int, int]]) -> int:
        with path.open("rb") as handle:
            stat = os.fstat(handle.fileno())
            inode, size, count = self._line_counts.get(path.name, (stat.st_ino, 0, 0))
            if inode != stat.st_ino or stat.st_size < size:
                size, count = 0, 0
            handle.seek(size)
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                count += chunk.count(b"\n")
                size += len(chunk)
        seen[path.name] = (stat.st_ino, size, count)
        return count


# --- helpers --------------------------------------------------------------------------------------


def _new_name() -> str:
    return f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}"


def _encode(item: Mapping[str, str]) -> bytes:
    return (json.dumps(dict(item), ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _lock_current(path: Path, fd: int) -> bool:
    """flock `fd` without waiting, and make sure `path` still names that very file (not renamed away)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _parse(data: bytes, name: str) -> tuple[list[dict[str, str]], int]:
    """Complete, well-formed lines; a torn last line (crash mid-write) or a corrupt line is skipped."""
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, else a line cut short
    records: list[dict[str, str]] = []
    skipped = 0
    for line in _non_empty(lines):
        record = _decode(line)
        if record is None:
            skipped += 1
            log.error("spool file %s: skipped a corrupt line of %d bytes", name, len(line))
        else:
            records.append(record)
    if tail:
        skipped += 1
        log.warning("spool file %s: skipped a torn last line of %d bytes (a write cut short)", name, len(tail))
    return records, skipped


def _non_empty(lines: Iterable[bytes]) -> Iterator[bytes]:
    return (line for line in lines if line.strip())


def _decode(line: bytes) -> dict[str, str] | None:
    try:
        value = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return None
    return value


def _fsync_dir(directory: Path) -> None:
    """Make a created, renamed or deleted name durable too, not only the file's bytes."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _spool_error(error: OSError) -> SpoolError:
    detail = f"{error.strerror or error} ({error.filename or ''})".replace(" ()", "")
    if error.errno in _FULL_ERRNOS:
        return SpoolFull(detail)
    return SpoolUnavailable(detail)

"""Crash-safe output files.

Every file the package writes while a run goes on (``checkpoint_last.pt``, ``encoder.pt``, the
linear probe's metrics, the embeddings, the scripts' indexes and tables) is written the same way:
to ``<path>.tmp<pid>`` in the same folder, flushed and ``fsync``-ed, then renamed over ``path``
(``os.replace``, atomic on POSIX). A reader sees the old file or the new one, never a half-written
one; a process killed mid-write (SIGKILL, out of memory, node lost) leaves only its temp file,
which :func:`remove_stale_temps` removes when the next run starts.

Only the standard library is imported at module level (torch when :func:`atomic_save` is called),
so scripts can use this without importing the rest of the package's dependencies.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from typing import IO, Any

__all__ = [
    "BackgroundWriter",
    "OutputNotWritableError",
    "atomic_save",
    "atomic_write",
    "atomic_write_text",
    "check_writable",
    "remove_stale_temps",
    "snapshot",
    "temp_path",
]

logger = logging.getLogger("monai_ssl_ext.io")


class OutputNotWritableError(OSError):
    """An output folder or file cannot be written (read-only, no permission, a file where a folder
    should be ...); raised when a run starts rather than after it trained."""


def temp_path(path: str | os.PathLike, pid: int | None = None) -> str:
    """The temporary name :func:`atomic_write` uses for ``path``: ``<path>.tmp<pid>``."""
    return f"{os.fspath(path)}.tmp{os.getpid() if pid is None else int(pid)}"


def _fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (best effort: not every OS / file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO], Any], mode: str = "wb", **open_kwargs) -> str:
    """Write ``path`` atomically: ``write(f)`` fills ``<path>.tmp<pid>`` (opened with ``mode``),
    which is flushed, ``fsync``-ed and renamed over ``path``. On any error the temp file is removed
    and ``path`` is left as it was. Creates the parent folder. Returns ``path`` as a string."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, mode, **open_kwargs) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> str:
    """``torch.save(obj, path)``, atomically (see :func:`atomic_write`)."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> str:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(text), mode="w", encoding=encoding)


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (``os.kill(pid, 0)`` sends nothing)."""
    if pid <= 0:  # 0 / negative would address process groups: not a writer's pid
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except (OverflowError, ValueError, OSError):
        return False
    return True


def remove_stale_temps(path: str | os.PathLike, log: logging.Logger | None = None) -> list[str]:
    """Remove the temp files that writers of ``path`` left behind when they were killed: the files
    ``<path>.tmp<pid>`` next to ``path`` whose process ``pid`` is no longer running (or is this
    process, which is not writing ``path`` while it calls this). Temp files of running processes
    and every other file are kept. Logs and returns the removed paths."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(re.escape(os.path.basename(path)) + r"\.tmp(\d+)")
    try:
        names = sorted(os.listdir(folder))
    except OSError:  # no folder yet: nothing left behind
        return []
    log = log or logger
    removed = []
    for name in names:
        m = pattern.fullmatch(name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and _pid_alive(pid):
            continue
        stale = os.path.join(folder, name)
        if not os.path.isfile(stale) or os.path.islink(stale):
            continue
        try:
            size = os.path.getsize(stale)
            os.remove(stale)
        except FileNotFoundError:
            continue
        except OSError as e:
            log.warning(f"cannot remove the stale temporary file {stale} ({e.strerror})")
            continue
        log.warning(f"removed the stale temporary file {stale} ({size} bytes) left by process {pid}, "
                    "which was stopped while writing it")
        removed.append(stale)
    return removed


def check_writable(path: str | os.PathLike, what: str = "output", hint: str = "") -> None:
    """Fail now, naming the path, when ``path`` could not be written later: create its folder
    (if missing) and create, write and remove ``<path>.tmp<pid>`` there.

    Raises:
        OutputNotWritableError: the folder cannot be created or written, or ``path`` is a folder.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    suffix = f"; {hint}" if hint else ""
    if os.path.isdir(path):
        raise OutputNotWritableError(f"cannot write the {what} {path}: it is a folder{suffix}")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise OutputNotWritableError(
            f"cannot create the folder {folder} for the {what} {path} ({e.strerror or e}){suffix}"
        ) from e
    probe = temp_path(path)
    try:
        with open(probe, "wb") as f:
            f.write(b"write probe")
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as e:
        try:
            os.remove(probe)
        except OSError:
            pass
        raise OutputNotWritableError(
            f"cannot write the {what} {path}: the folder {folder} is not writable ({e.strerror or e}){suffix}"
        ) from e


def snapshot(obj: Any) -> Any:
    """A copy of a (nested dict / list / tuple) state whose tensors are cloned: what a background write may save
    while training goes on changing the originals in place."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return type(obj)((k, snapshot(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class BackgroundWriter:
    """Writes files on a background thread, so that training does not wait for the disk (the ``fsync`` of a
    checkpoint of a few hundred MB takes up to a second). One write at a time: :meth:`submit` first waits for the
    previous one, so memory holds at most one snapshot. A failed write is logged when it fails and raised again by
    the next :meth:`submit` or :meth:`wait`. The thread is not a daemon: a process that ends, or fails, finishes the
    write first; a killed one leaves the temp file of an atomic write and the previous file intact."""

    def __init__(self, name: str = "monai_ssl_ext.BackgroundWriter") -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.logger = logging.getLogger(name)

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the writer thread, after the previous write has finished."""
        self.wait()

        def run() -> None:
            try:
                fn(*args)
            except BaseException as e:  # noqa: BLE001 - kept and raised in the training thread
                self.logger.error(f"background write failed: {type(e).__name__}: {e}")
                self._error = e

        self._thread = threading.Thread(target=run, name="monai_ssl_ext-writer", daemon=False)
        self._thread.start()

    def wait(self) -> None:
        """Wait for the write in flight; raise its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

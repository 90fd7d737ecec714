"""Files and their names: writes that never leave half a file (a crash, a full disk or Ctrl-C at
any moment leaves the previous file or the new one, whole, and no litter), and names that stay
inside their directory."""

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Hold Ctrl-C back until the block is done, then raise KeyboardInterrupt as usual."""
    if threading.current_thread() is not threading.main_thread():  # only it gets signals
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """write(f) into a temporary file beside path, flushed to the disk, then renamed over path.
    Ctrl-C waits for it to finish."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with ctrl_c_deferred():
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.chmod(name, 0o644)  # mkstemp makes it private; these files are shared like any
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(name, path)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise


def replace_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """write(f) into a temporary file beside path, then renamed over path: a process killed in
    the middle leaves the previous file or none, never half of one. Not flushed to the disk,
    unlike atomic_write: for many small files (import_data.py's samples), which a power cut
    may lose and a run again writes again."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def is_plain_name(name: str) -> bool:
    """Whether name is a file name without directories (a sample's ID, a run's name), so that
    a path made from it stays inside its directory."""
    try:
        name.encode("utf-8")  # a lone surrogate (\ud800 in JSON) is a str, but no file name
    except UnicodeEncodeError:
        return False
    return name not in ("", ".", "..") and not any(c in name for c in "/\\\0")

"""Files that must never be half-written or execute code: atomic writes, safetensors checkpoints, a run lock.

Why safetensors + JSON: a pickle (torch.save's default) can run arbitrary code when loaded; a checkpoint from a
stranger must be data only. The recipe travels inside the safetensors header metadata, so a checkpoint file alone
says how to rebuild its model.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from safetensors.torch import save as save_safetensors

from robust_uatt.utils.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


TEMP_SUFFIX = ".tmp"


def _write_all(fd: int, data: bytes) -> None:
    """Every byte of ``data`` to ``fd`` (one place, so tests can simulate a full disk here)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, rename: readers see the old or the new file, whole.

    A kill at any moment leaves the previous file (plus at most a ``.<name>.*.tmp`` file, removed by
    ``remove_stale_temps``) or the new one, never a truncated one. An OSError (full disk, read-only folder)
    names ``path``, removes the temporary file and leaves the previous file untouched.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        try:
            os.fchmod(fd, _umask_mode())  # mkstemp makes 0600 files; results are meant to be shared
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    _fsync_dir(path.parent)


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder`` (call only while holding its RunLock)."""
    removed = []
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise UserError(f"{path}: not valid JSON (nested too deeply)") from None


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """One JSON object per line; flushed and fsynced so a kill loses at most the line being written."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """safetensors file written atomically; ``metadata`` values are JSON-encoded into the header."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    data = save_safetensors(flat, metadata={k: json.dumps(v, default=str) for k, v in metadata.items()})
    atomic_write_bytes(path, data)


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and decoded metadata of a safetensors file; any corruption is a UserError, never a traceback."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
        tensors = load_file(str(path))
        meta = {k: json.loads(v) for k, v in raw_meta.items()}
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError, RecursionError) as e:
        raise UserError(f"{path}: corrupt or unreadable checkpoint ({e.__class__.__name__}: {e})") from None
    return tensors, meta


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded metadata of a safetensors file, from its header only; {} when it cannot be read."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
        return {k: json.loads(v) for k, v in raw_meta.items()}
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError, RecursionError):
        return {}


@contextlib.contextmanager
def weights_only_torch_load() -> Iterator[None]:
    """Within the block, every ``torch.load`` (a library's too: robustbench calls ``torch.load(path,
    map_location='cpu')``) runs with ``weights_only=True``, passed explicitly: torch then ignores
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``, so a pickle can never run code however the environment is set."""
    original = torch.load

    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def load_torch_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A .pt/.pth state dict (e.g. RobustBench weights), loaded with weights_only=True: no code runs."""
    try:
        with weights_only_torch_load():
            obj = torch.load(str(path), map_location="cpu")
    except Exception as e:  # UnpicklingError for crafted pickles, RuntimeError for corrupt zips
        raise UserError(f"{path}: refused to load ({e.__class__.__name__}: {str(e).splitlines()[0]})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise UserError(f"{path}: not a state dict of tensors")
    return obj


def load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Strict load with a one-line explanation of what does not fit."""
    check_state_fits(model, state, where)
    model.load_state_dict(state)


def check_state_fits(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """UserError naming what does not fit (missing, unexpected, wrong shape); ``model`` may live on the meta
    device (shapes only, no memory)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with wrong shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise UserError(f"{where}: checkpoint does not fit the architecture: {'; '.join(parts)}")


class RunLock:
    """One writer per run directory: an exclusive ``flock`` on ``RUN/.lock``.

    The kernel drops a flock when its process dies (SIGKILL included), so a dead writer never leaves the directory
    stuck and a reused pid cannot fool it. The file records the owner (pid, process start time, host) for the
    message a second writer gets. Where flock is unavailable (no ``fcntl``, or a file system answering ENOLCK) the
    lock falls back to creating the file exclusively; a stale file is then recognised by its pid being dead or
    belonging to a process with another start time (pid reuse), read from /proc.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / ".lock"
        self.held = False
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            fd = _open_lock_file(self.path, os.O_RDWR | os.O_CREAT)
            try:
                locked = _flock(fd)
            except BlockingIOError:
                os.close(fd)
                raise UserError(self._busy_message()) from None
            except OSError:
                os.close(fd)
                raise
            if not locked:
                os.close(fd)
                return self._acquire_exclusive()
            # The previous owner may have unlinked the file between our open and flock: lock the file on disk.
            try:
                same = os.fstat(fd).st_ino == os.lstat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            _write_all(fd, json.dumps(_me()).encode())
            self._fd, self.held = fd, True
            return self
        raise UserError(f"cannot lock {self.path.parent} (lock file {self.path} keeps changing)")

    def _acquire_exclusive(self) -> "RunLock":
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | _NO_FOLLOW, 0o644)
            except FileExistsError:
                try:
                    _open_lock_file(self.path, os.O_RDONLY, close=True)  # a link or a FIFO: refused, kept
                except FileNotFoundError:
                    continue
                owner = self.owner()
                if owner is not None and owner.get("pid") != os.getpid() and _owner_alive(owner):
                    raise UserError(self._busy_message()) from None
                self.path.unlink(missing_ok=True)  # stale: its owner is dead
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(_me()))
            self.held = True
            return self
        raise UserError(f"cannot lock {self.path.parent}")

    def owner(self) -> dict[str, Any] | None:
        """What the lock file says about its owner (None if unreadable); old files hold a bare pid."""
        try:
            fd = _open_lock_file(self.path, os.O_RDONLY)
        except (OSError, UserError):
            return None
        try:
            text = os.read(fd, 4096).decode(errors="replace").strip()
        except OSError:
            return None
        finally:
            os.close(fd)
        try:
            owner = json.loads(text)
        except json.JSONDecodeError:
            return None
        if isinstance(owner, int):
            return {"pid": owner}
        return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None

    def _busy_message(self) -> str:
        owner = self.owner()
        who = f"process {owner['pid']}" if owner else "another process"
        if owner and owner.get("host") not in (None, socket.gethostname()):
            who += f" on {owner['host']}"
        return f"{self.path.parent} is in use by {who} (lock file {self.path}); wait for it to finish or stop it"

    def check_free(self) -> None:
        """Raise the 'in use' UserError if another live process holds the lock; takes nothing."""
        if not os.path.lexists(self.path):
            return
        try:
            fd = _open_lock_file(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            if _flock(fd):
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
        except BlockingIOError:
            raise UserError(self._busy_message()) from None
        finally:
            os.close(fd)
        owner = self.owner()  # no flock here: the pid fallback decides
        if owner is not None and owner.get("pid") != os.getpid() and _owner_alive(owner):
            raise UserError(self._busy_message())

    def release(self) -> None:
        if not self.held:
            return
        if self._fd is not None:
            try:  # unlink while still locked, then unlock by closing; a racing opener re-checks the inode
                if os.fstat(self._fd).st_ino == os.lstat(self.path).st_ino:
                    self.path.unlink()
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None
        else:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# Never follow a link named .lock (it could point at any file the user can write) and never block on a FIFO.
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)
_SAFE_OPEN = _NO_FOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _open_lock_file(path: Path, flags: int, close: bool = False) -> int:
    """Open ``path`` without following a symbolic link; anything but a regular file is refused (UserError)."""
    try:
        fd = os.open(path, flags | _SAFE_OPEN, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            raise UserError(f"{path} is a symbolic link; a lock file must be a regular file (remove it if this "
                            f"directory is yours)") from None
        if e.errno == errno.ENXIO:  # a FIFO without a reader
            raise UserError(f"{path} is not a regular file; remove it if this directory is yours") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{path} is not a regular file; remove it if this directory is yours")
    if close:
        os.close(fd)
    return fd


def _flock(fd: int) -> bool:
    """Take an exclusive non-blocking flock: True when held, False when flock is unsupported here.

    BlockingIOError propagates: someone else holds it.
    """
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            return False
        raise
    return True


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/<pid>/stat), None where /proc is unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # fields after "(comm)": state is field 3, starttime field 22


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "start": process_start_time(os.getpid()), "host": socket.gethostname()}


def _owner_alive(owner: dict[str, Any]) -> bool:
    if owner.get("host") not in (None, socket.gethostname()):
        return True  # cannot tell from here: refuse rather than risk two writers
    pid = owner["pid"]
    if not _alive(pid):
        return False
    start = owner.get("start")
    return start is None or process_start_time(pid) in (None, start)  # another start time: a reused pid


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def safe_component(name: object, fallback: str = "model") -> str:
    """A name read from a file (a checkpoint's recipe name, a results.json model name) as ONE path component: no
    separators, no leading dot (so never '..'), no control characters, at most 100 characters."""
    text = re.sub(r"[^A-Za-z0-9._+=@,-]+", "_", str(name)).lstrip(".-")[:100]
    return text or fallback


def check_writable(path: Path) -> None:
    """Refuse early (before any work) when ``path`` cannot be created: its nearest existing parent must be a writable
    directory."""
    probe = Path(path)
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise UserError(f"cannot write to {path} ({probe} is not a writable directory)")

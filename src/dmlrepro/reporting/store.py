"""Access to the MLflow tracking store: creating or checking it, the file lock of a sqlite store,
bounded waits and clear faults, and where its experiments keep their artifacts.

A sqlite store (``sqlite:///...``) is created once by `dmlrepro mlflow-init` (:func:`init_store`)
before parallel jobs start, and every write then happens under one file lock, ``<db>.lock``, held
for a short batch of writes: parallel jobs on one machine never create the schema concurrently
(which corrupts it) nor contend for sqlite's write lock. The lock's holder writes ``pid <pid> on
<host>: <command>`` into it, so a job that waits can say whom it waits for; the wait is bounded by
``mlflow.lock_wait_seconds`` of params.yaml (default 300). sqlite's own write lock (the MLflow UI, a
script) is retried with back-off within the same bound. A corrupt store is named with how to move it
aside; a store whose folder cannot be created names params.yaml's ``mlflow.tracking_uri``.

A tracking server (``http://``, ``https://``: jobs spread over a cluster's nodes) serialises writes
itself: no lock is taken, and `mlflow-init` only checks that it answers (:func:`check_server`).
Design notes: docs/mlflow.md.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from ..errors import DmlReproError

DEFAULT_ARTIFACT_ROOT = "mlartifacts"  # beside the sqlite file, where `mlflow server` keeps its own
DEFAULT_LOCK_WAIT = 300.0  # seconds; params.yaml's mlflow.lock_wait_seconds
REPORT_EVERY = 10.0  # seconds between "still waiting" lines
SQLITE_MAGIC = b"SQLite format 3\x00"
_BUSY = ("database is locked", "database table is locked", "database is busy")
_CORRUPT = ("file is not a database", "database disk image is malformed", "file is encrypted or is not a database")
_state = threading.local()  # the deadline of the current locked batch, for the busy retries


class StoreError(DmlReproError):
    """The tracking store cannot be used (locked, corrupt, unreachable): nothing can be recorded."""


def sqlite_file(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def lock_wait(params: dict | None) -> float:
    """The bound on waiting for the store, in seconds (params.yaml's mlflow.lock_wait_seconds)."""
    value = ((params or {}).get("mlflow") or {}).get("lock_wait_seconds")
    return DEFAULT_LOCK_WAIT if value is None else float(value)


def _move_aside(db: Path) -> str:
    return (f"move it aside (`mv {db} {db}.corrupt`; its runs' files in results/ are untouched) and run "
            f"`dmlrepro mlflow-init` to start a new store, or restore a backup of it")


def corrupt_error(db: Path, why: str) -> StoreError:
    return StoreError(f"the MLflow store {db} is not a usable sqlite database ({why}); {_move_aside(db)}")


def check_sqlite_file(db: Path) -> None:
    """Refuse a store file that is not a sqlite database (an empty file is a store not yet created)."""
    try:
        with open(db, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot read the MLflow store {db}: {exc.strerror or exc}") from None
    if head and head != SQLITE_MAGIC:
        raise corrupt_error(db, "its header is not sqlite's: corrupt, truncated or another kind of file")


def ensure_folder(db: Path, uri: str) -> None:
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"the folder {db.parent} of the MLflow store cannot be created ({exc.strerror or exc}); "
                         f"params.yaml's mlflow.tracking_uri is {uri}: point it at a writable folder (e.g. "
                         f"sqlite:///mlflow.db, beside params.yaml) and rerun") from None


def _holder(lock: Path) -> str:
    try:
        text = lock.read_text("utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "a process that did not record its pid (an older dmlrepro, or another tool)"


def _holder_pid(lock: Path) -> str:
    words = _holder(lock).split()
    return words[1] if len(words) > 1 and words[0] == "pid" and words[1].isdigit() else "PID"


def _identity() -> str:
    command = " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv))[:300]
    return f"pid {os.getpid()} on {socket.gethostname()}: {command}\n"


def _acquire(fd: int, lock: Path, db: Path, wait: float) -> None:
    start = time.monotonic()
    next_report = start + REPORT_EVERY
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        now = time.monotonic()
        if now - start >= wait:
            pid = _holder_pid(lock)
            raise StoreError(
                f"gave up after waiting {wait:.0f} s for the MLflow store lock {lock}, held by {_holder(lock)}. "
                f"If that process is stopped (Ctrl-Z), resume it (`fg` in its shell, or `kill -CONT {pid}`); if "
                f"it hangs, end it (`kill {pid}`); to wait longer, raise mlflow.lock_wait_seconds in params.yaml")
        if now >= next_report:
            print(f"waiting for the MLflow store lock {lock} ({now - start:.0f} s of at most {wait:.0f} s, "
                  f"mlflow.lock_wait_seconds), held by {_holder(lock)}", file=sys.stderr, flush=True)
            next_report += REPORT_EVERY
        time.sleep(0.1)


@contextlib.contextmanager
def store_lock(uri: str, wait: float | None = None) -> Iterator[None]:
    """Hold the store's file lock (a sqlite store; a server serialises writes itself) for a short
    batch of writes, waiting at most `wait` seconds for it."""
    wait = DEFAULT_LOCK_WAIT if wait is None else wait
    db = sqlite_file(uri)
    if db is None:
        yield
        return
    ensure_folder(db, uri)
    lock = Path(f"{db}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise StoreError(f"cannot open the MLflow store's lock file {lock} ({exc.strerror or exc}); make "
                         f"{lock.parent} writable or point params.yaml's mlflow.tracking_uri elsewhere") from None
    try:
        _acquire(fd, lock, db, wait)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, _identity().encode(), 0)
            check_sqlite_file(db)
            _state.deadline = time.monotonic() + wait
            yield
        finally:
            _state.deadline = None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _fault(exc: BaseException) -> str | None:
    text = str(exc).lower()
    if any(s in text for s in _BUSY):
        return "busy"
    if any(s in text for s in _CORRUPT):
        return "corrupt"
    return None


class RetryingClient:
    """An MlflowClient whose calls retry sqlite's "database is locked" with back-off until the
    current batch's bound, and name a corrupt store instead of SQLAlchemy's traceback."""

    def __init__(self, uri: str, wait: float | None = None):
        self._uri, self._wait = uri, DEFAULT_LOCK_WAIT if wait is None else wait
        self._db = sqlite_file(uri)
        self._client = self._call(self._create)

    def _create(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self._uri)  # opens (and checks) the store now, under the retries

    def _call(self, fn, *args, **kwargs):
        deadline = getattr(_state, "deadline", None) or time.monotonic() + self._wait
        delay = 0.05
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - only the store's faults are handled here
                fault = _fault(exc) if self._db is not None else None
                if fault == "corrupt":
                    raise corrupt_error(self._db, str(exc).strip().splitlines()[0][:200]) from None
                if fault != "busy":
                    raise
                if time.monotonic() + delay > deadline:
                    raise StoreError(
                        f"the MLflow store {self._db} stayed locked by another sqlite client (the MLflow UI, a "
                        f"script, a stopped job) for {self._wait:.0f} s (mlflow.lock_wait_seconds in params.yaml): "
                        f"close that client or let it finish, then rerun") from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: self._call(attr, *args, **kwargs)


def process_gone(pid: str | None, host: str | None) -> bool:
    """Whether the process `pid` of `host` has ended (only decidable on this host)."""
    if not pid or not str(pid).isdigit() or host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(int(pid))


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


# ---------------------------------------------------------------------------------------------
# Creating and checking the store


def init_store(uri: str, wait: float | None = None) -> None:
    """Create the tracking store once (schema migrations), before parallel jobs start; for a
    tracking server, check that it answers (its own store is the server's business)."""
    if is_server(uri):
        check_server(uri)
        return
    with store_lock(uri, wait):
        RetryingClient(uri, wait).search_experiments(max_results=1)


def check_server(uri: str, timeout: float = 10.0) -> None:
    """Raise DmlReproError, naming `uri`, unless an MLflow tracking server answers there: its
    /health at once, then its API (which MLflow's client retries for minutes when nobody answers)."""
    import urllib.error
    import urllib.request

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    health = f"{uri.rstrip('/')}/health"
    fix = ("start it (workflow/scripts/mlflow_server.sh) on a host that every node reaches, or correct "
           "params.yaml's mlflow.tracking_uri")
    try:
        with urllib.request.urlopen(health, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        if exc.code not in (401, 403):  # behind authentication it answers; the client has the credentials
            raise DmlReproError(f"the MLflow tracking server {uri} does not answer: {health} "
                                f"returned HTTP {exc.code}; {fix}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DmlReproError(f"the MLflow tracking server {uri} does not answer ({health}: "
                            f"{getattr(exc, 'reason', exc)}); {fix}") from None
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except MlflowException as exc:
        raise DmlReproError(f"the MLflow tracking server {uri} answers, but its API fails: {exc}") from None


def artifact_root(params: dict) -> str | None:
    """Where experiments created here keep their artifacts (a URI), or None for the server's default:
    params.yaml's mlflow.artifact_root, a path taken from the sqlite file's folder (default
    mlartifacts); with a server only a URI (s3://...) counts, a path means nothing to it."""
    cfg = params["mlflow"]
    root = cfg.get("artifact_root")
    if root and "://" in str(root):
        return str(root)
    if is_server(cfg["tracking_uri"]):  # a path here means nothing to the server: its default
        return None
    db = sqlite_file(cfg["tracking_uri"])
    if db is None:
        return Path(root).resolve().as_uri() if root else None
    return (db.resolve().parent / (root or DEFAULT_ARTIFACT_ROOT)).as_uri()

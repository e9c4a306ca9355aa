"""Where trials run: in this process, in local subprocesses, or on the workers of a
Dask cluster. The study submits jobs and collects finished results; executors never decide
what to run."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

from facenas.core.registry import Registry

from .runner import TrialJob, run_in_process, run_subprocess
from .trial import Result, Trial, crashed, interrupted


class Executor(ABC):
    """Runs :class:`TrialJob` s; ``capacity`` jobs at once."""

    capacity: int = 1

    @abstractmethod
    def submit(self, job: TrialJob, should_prune: Callable[[int, float], bool] | None = None) -> None:
        """Start a job (``should_prune`` gets its intermediate values where the executor can: the
        backend's pruning decision)."""

    @abstractmethod
    def collect(self, timeout: float | None = None) -> list[tuple[int, Result]]:
        """Wait for at least one running job (up to ``timeout`` seconds) and return the finished
        ones as (trial id, result)."""

    @property
    @abstractmethod
    def running(self) -> int:
        """Jobs started and not yet collected."""

    def close(self) -> None:
        """Release workers."""

    def interrupt(self) -> None:
        """Stop the running jobs (the study was asked to stop): each comes back as an
        *interrupted* result, which the study does not record. In-process trials stop by
        themselves between two batches (:mod:`facenas.core.signals`)."""


class _Synchronous(Executor):
    """Runs each job to completion inside ``submit``; ``collect`` hands the results over."""

    capacity = 1

    def __init__(self) -> None:
        self._done: list[tuple[int, Result]] = []

    def _run(self, job: TrialJob, should_prune: Callable[[int, float], bool] | None) -> Result:
        raise NotImplementedError

    def submit(self, job: TrialJob, should_prune: Callable[[int, float], bool] | None = None) -> None:
        self._done.append((job.trial.id, self._run(job, should_prune)))

    def collect(self, timeout: float | None = None) -> list[tuple[int, Result]]:
        done, self._done = self._done, []
        return done

    @property
    def running(self) -> int:
        return len(self._done)


class InProcess(_Synchronous):
    """Trials one after another in the study's own process (the fastest for small trials, and
    the one that lets pruners stop trials on intermediate validation values)."""

    def _run(self, job: TrialJob, should_prune: Callable[[int, float], bool] | None) -> Result:
        return run_in_process(job, should_prune)


class FunctionExecutor(_Synchronous):
    """Evaluates trials with a plain function ``Trial -> Result`` (a tabular objective: a lookup table or a replay)."""

    def __init__(self, fn: Callable[[Trial], Result]) -> None:
        super().__init__()
        self.fn = fn

    def _run(self, job: TrialJob, should_prune: Callable[[int, float], bool] | None) -> Result:
        start = time.perf_counter()
        try:
            result = self.fn(job.trial)
        except Exception as exc:  # a failing objective is a failed trial
            result = crashed(exc)
        result.duration = result.duration or time.perf_counter() - start
        return result


class _FutureExecutor(Executor):
    """Shared bookkeeping of executors built on futures."""

    def __init__(self) -> None:
        self._futures: dict[Any, int] = {}

    @property
    def running(self) -> int:
        return len(self._futures)

    def _wait(self, futures: list[Any], timeout: float | None) -> set[Any]:
        done, _ = wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
        return done

    def collect(self, timeout: float | None = None) -> list[tuple[int, Result]]:
        if not self._futures:
            return []
        out = []
        for future in self._wait(list(self._futures), timeout):
            trial_id = self._futures.pop(future)
            try:
                result = future.result()
            except Exception as exc:  # the job itself failed outside the trial (a lost worker, ...)
                result = crashed(exc)
            out.append((trial_id, result))
        return out


class SubprocessExecutor(_FutureExecutor):
    """``workers`` trials at once, each a ``facenas fit`` subprocess: a crash or an out-of-memory
    kill cannot take the study down.

    Args:
        workers: trials running at once.
        gpus: GPU indices handed out one per worker through ``CUDA_VISIBLE_DEVICES``
            (e.g. ``[0, 1, 2, 3]``); empty: leave the environment alone.
    """

    def __init__(self, workers: int = 2, gpus: list[int] | None = None) -> None:
        super().__init__()
        self.capacity = workers
        self.gpus = list(gpus or [])
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="facenas-trial")
        self._slots: queue.Queue[int] = queue.Queue()
        for slot in range(workers):
            self._slots.put(slot)
        self._stop = threading.Event()

    def _run(self, job: TrialJob) -> Result:
        slot = self._slots.get()
        try:
            if self._stop.is_set():
                return interrupted("the study stopped before the trial started")
            if self.gpus:
                job.env = {**job.env, "CUDA_VISIBLE_DEVICES": str(self.gpus[slot % len(self.gpus)])}
            return run_subprocess(job, should_stop=self._stop.is_set)
        finally:
            self._slots.put(slot)

    def submit(self, job: TrialJob, should_prune: Callable[[int, float], bool] | None = None) -> None:
        self._futures[self._pool.submit(self._run, job)] = job.trial.id

    def interrupt(self) -> None:
        self._stop.set()  # every running child is terminated within half a second

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor(_FutureExecutor):
    """Trials as ``facenas fit`` subprocesses on the workers of a ``dask.distributed`` cluster.

    Every worker needs this repository and its environment at the same path (a shared file
    system or the same image). A worker lost mid-trial is noticed by the scheduler, which runs
    the trial again on another worker.

    Args:
        scheduler: address of a running scheduler (``tcp://host:8786``); None starts a
            ``LocalCluster`` of ``workers`` single-threaded worker processes.
        workers: the local cluster's size, and how many trials are submitted at once to a
            remote cluster (default: its current number of workers).
    """

    def __init__(self, scheduler: str | None = None, workers: int | None = None) -> None:
        super().__init__()
        from distributed import Client, LocalCluster

        if scheduler is None:
            self._cluster = LocalCluster(
                n_workers=workers or 2, threads_per_worker=1, processes=True, dashboard_address=None
            )
            self.client = Client(self._cluster)
        else:
            self._cluster = None
            self.client = Client(scheduler)
        self.capacity = workers or max(1, len(self.client.scheduler_info().get("workers", {})))
        self._lock = threading.Lock()
        self._stop_name = f"facenas-stop-{uuid.uuid4().hex}"  # a distributed.Event the trials poll

    def _wait(self, futures: list[Any], timeout: float | None) -> set[Any]:
        from distributed import wait as dask_wait

        try:
            done, _ = dask_wait(futures, timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            return set()
        except Exception:  # a cancelled future: collect() turns each into a failed result
            return {f for f in futures if f.status in ("cancelled", "error", "lost")} or set()
        return set(done)

    def submit(self, job: TrialJob, should_prune: Callable[[int, float], bool] | None = None) -> None:
        future = self.client.submit(
            run_subprocess, job, _DaskStop(self._stop_name), pure=False, key=f"trial-{job.trial.id}-{id(job)}"
        )
        self._futures[future] = job.trial.id

    def interrupt(self) -> None:
        from distributed import Event

        # every trial polls it: its `facenas fit` child is terminated, it returns interrupted
        Event(self._stop_name, client=self.client).set()

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


class _DaskStop:
    """``should_stop`` of a trial on a Dask worker: whether the study set its stop event
    (picklable; the event is looked up once, on the worker)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._event: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "_event": None}

    def __call__(self) -> bool:
        from distributed import Event

        try:
            if self._event is None:
                self._event = Event(self.name)
            return bool(self._event.is_set())
        except Exception:  # scheduler unreachable: the worker's own fate decides
            return False


EXECUTORS: Registry[type[Executor]] = Registry("executor")
EXECUTORS.register("inprocess", InProcess)
EXECUTORS.register("subprocess", SubprocessExecutor)
EXECUTORS.register("dask", DaskExecutor)


def create_executor(spec: str | dict[str, Any] | None) -> Executor:
    """An executor from ``"inprocess"`` / ``{"class_path": "dask", "init_args": {...}}``."""
    return EXECUTORS.instantiate("inprocess" if spec is None else spec, Executor)

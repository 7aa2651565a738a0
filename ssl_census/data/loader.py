"""BlockShuffleLoader: shuffled batches of a shard-store split, read ahead by worker threads.

Pipeline (docs/loader.md): a producer thread walks the epoch plan (:mod:`.plan`) one fetch
at a time. For each fetch it asks the worker pool to decompress the fetch's blocks into one
buffer per array (indices, data, counts), then cuts the fetch's cell order into batches and
asks the pool to gather each batch's rows out of the buffer (:mod:`.gather`). A batch that
straddles two fetches gathers from both buffers. Finished batches wait in a bounded queue;
the number of buffers and batches alive at once is what ``memory_budget_bytes`` bounds.

Threads, not processes: decompression (numcodecs Blosc), file reads and the compiled gather
release the GIL, and a thread hands its ~100 MB batch over without a copy. Batches leave the
workers as CSR parts in (for CUDA, pinned) host memory; dense tensors are built on the target
device, never as a dense host array (except for ``device="cpu"``, where the host is the device).
"""

from __future__ import annotations

import os
import queue
import threading
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ssl_census.core.errors import UserError
from ssl_census.core.sparse import csr_tensor
from ssl_census.data.gather import gather_runs, row_pointer
from ssl_census.data.plan import EpochPlan, Fetch, class_balanced_weights
from ssl_census.data.readers import array_dtype, open_reader
from ssl_census.data.source import encode_obs, open_split

LAYER_ARRAYS = {"x": "data", "counts": "counts"}
SAMPLERS = (None, "balanced")
DEFAULT_BLOCK = 2048
DEFAULT_BUDGET = 2 * 2**30
# Worker threads by default: at most this many (and never more than the CPU count). A fixed
# cap, not the CPU count: every worker holds a batch, so on a many-core node a per-core default
# would outgrow the memory budget and, through the fetch size, change the order of an epoch.
DEFAULT_WORKERS = 4


@dataclass
class Batch:
    """One batch: values per layer, obs columns, and the cells' row positions in the split."""

    index: torch.Tensor
    obs: dict[str, torch.Tensor]
    layers: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def x(self) -> torch.Tensor:
        return self.layers["x"]

    @property
    def counts(self) -> torch.Tensor:
        return self.layers["counts"]

    def __len__(self) -> int:
        return len(self.index)


@dataclass
class _HostBatch:
    """A batch in host memory as CSR parts, before it goes to the device."""

    rows: np.ndarray
    indptr: torch.Tensor
    indices: torch.Tensor
    values: dict[str, torch.Tensor]
    obs: dict[str, torch.Tensor]


@dataclass
class _FetchBuffer:
    """A fetch's decompressed arrays and, per fetch cell, where its run starts and how long."""

    arrays: dict[str, np.ndarray]
    starts: np.ndarray
    lengths: np.ndarray
    rows: np.ndarray


class _BufferPool:
    """Large arrays handed back when nothing uses them any more, and reused.

    A fresh array page-faults on first write, which here costs about as much as filling it
    (decompressing into a fetch buffer, gathering into a batch); reusing a few per type
    removes that cost. Arrays come back through ``weakref.finalize`` on their last user, so
    a batch the caller keeps is never overwritten: the pool just makes a new one.
    """

    def __init__(self, keep: int = 3) -> None:
        self.keep = keep
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, n: int, dtype: np.dtype) -> np.ndarray:
        with self._lock:
            fits = [i for i, b in enumerate(self._free) if b.dtype == dtype and len(b) >= n]
            if fits:
                return self._free.pop(min(fits, key=lambda i: len(self._free[i])))
        return np.empty(int(n * 1.05) + 1024, dtype=dtype)

    def give(self, bases: list[np.ndarray]) -> None:
        with self._lock:
            free = self._free + list(bases)
            kept: list[np.ndarray] = []
            for dtype in {b.dtype for b in free}:  # the largest few of each type stay
                kept += sorted((b for b in free if b.dtype == dtype), key=len)[-self.keep :]
            self._free = kept

    def clear(self) -> None:
        with self._lock:
            self._free.clear()


def _fetches_from(plan: EpochPlan, skip: int) -> Iterator[tuple[Fetch, int]]:
    """The plan's fetches from stream position ``skip`` on, each with the cells to skip in it."""
    for fetch in plan.fetches():
        if skip >= len(fetch):
            skip -= len(fetch)
            continue
        yield fetch, skip
        skip = 0


class BlockShuffleLoader:
    """Batches of a split: block-shuffled, prefetched, bounded in memory, rank-aware.

    Iterate it once per epoch and call :meth:`set_epoch` between epochs (as with torch's
    DistributedSampler): the order depends on ``(seed, epoch)`` only. See docs/loader.md.
    """

    def __init__(
        self,
        shards_dir: str | os.PathLike[str],
        split: str = "train",
        batch_size: int = 8192,
        layers: Sequence[str] = ("x",),
        obs_columns: Sequence[str] = ("cell_type_code",),
        dense: bool = True,
        device: str | torch.device = "cpu",
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        workers: int | None = None,
        reader: str = "auto",
        memory_budget_bytes: int = DEFAULT_BUDGET,
        block_size: int = DEFAULT_BLOCK,
        buffer_cells: int | None = None,
        prefetch_batches: int = 2,
        sampler: str | None = None,
    ) -> None:
        layers = tuple(layers)
        if (
            not layers
            or any(lay not in LAYER_ARRAYS for lay in layers)
            or len(set(layers)) != len(layers)
        ):
            raise UserError(f"bad layers {layers!r}", "use ('x',), ('counts',) or ('x', 'counts')")
        if batch_size < 1 or block_size < 1 or prefetch_batches < 1:
            raise UserError("batch_size, block_size and prefetch_batches must be at least 1")
        if sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {sampler!r}", "use sampler=None or 'balanced'")
        if sampler and not shuffle:
            raise UserError("the balanced sampler draws at random", "use it with shuffle=True")
        self.split_name = split
        self.batch_size, self.layers, self.dense = batch_size, layers, dense
        self.device = torch.device(device)
        self.shuffle, self.seed, self.drop_last, self.sampler = shuffle, seed, drop_last, sampler
        # Ranks come from the caller only (the trainer, from its DistEnv): a loader that read
        # RANK / WORLD_SIZE itself would shard embeddings and evaluations under torchrun.
        self.rank, self.world_size = int(rank), int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise UserError(f"rank {self.rank} outside world size {self.world_size}")
        if workers is not None and workers < 1:
            raise UserError(f"workers={workers}", "use at least 1 worker thread")
        self.prefetch_batches = prefetch_batches

        obs_columns = tuple(obs_columns)
        sampled = ("cell_type_code",) if sampler and "cell_type_code" not in obs_columns else ()
        source = open_split(shards_dir, split, obs_columns + sampled)
        self.n_cells, self.n_genes, self.nnz = source.n_cells, source.n_genes, source.nnz
        if self.n_cells == 0:
            raise UserError(f"split {split!r} has no cells", "choose a split with cells")
        self._arrays = ("indices", *(LAYER_ARRAYS[lay] for lay in layers))
        self.reader = open_reader(reader, source.x_root, ("indptr", *self._arrays))
        self._dtypes = {a: array_dtype(source.x_root, a) for a in self._arrays}
        self.indptr = self.reader.read("indptr", 0, self.n_cells + 1, np.dtype(np.int64))
        obs, categories = encode_obs(source.obs)
        self._weights = (
            class_balanced_weights(obs["cell_type_code"], source.labels)
            if sampler == "balanced"
            else None
        )
        self._obs = {c: obs[c] for c in obs_columns}
        self.categories = {c: v for c, v in categories.items() if c in obs_columns}

        self.block_size = min(block_size, self.n_cells)
        self.memory_budget_bytes = memory_budget_bytes
        self._buffer_requested = buffer_cells is not None
        planned = workers if workers is not None else self._default_workers()
        self.workers = planned if workers is not None else min(planned, os.cpu_count() or 1)
        self.buffer_cells = self._buffer_cells(buffer_cells, planned)
        self._pool = _BufferPool()  # fetch buffers
        self._out_pool = _BufferPool(keep=2 * (self.prefetch_batches + self.workers + 1))
        self._compile_gather()
        self.epoch = 0
        self._start_batch = 0  # where the next iteration starts (set by load_state_dict)
        self._yielded = 0  # batches handed out in the current iteration

    # -- configuration -----------------------------------------------------------------------

    def _batch_bytes(self, workers: int) -> float:
        """Host bytes of the batches alive at once: CSR parts queued, being gathered or held
        by the caller; plus, for dense CPU batches, the caller's and the next dense array
        (dense arrays are made one at a time, as the caller asks for the next batch)."""
        avg_nnz = max(1.0, self.nnz / self.n_cells)
        csr = avg_nnz * 4 * (1 + len(self.layers)) + 8
        alive = (self.prefetch_batches + workers + 1) * self.batch_size * csr
        if self.dense and self.device.type == "cpu":
            alive += 2 * self.batch_size * self.n_genes * 4 * len(self.layers)
        return alive

    def _fetch_bytes_per_cell(self) -> float:
        avg_nnz = max(1.0, self.nnz / self.n_cells)
        return avg_nnz * sum(self._dtypes[a].itemsize for a in self._arrays) + 24

    def _fits(self, workers: int) -> int:
        """Cells per fetch the budget holds beside the batches of ``workers`` threads: three
        fetch buffers are alive at once (one gathered from, one loaded, one starting)."""
        room = self.memory_budget_bytes - self._batch_bytes(workers)
        return int(room // (3 * self._fetch_bytes_per_cell()))

    def _target_cells(self) -> int:
        return max(8 * self.batch_size, 65536)

    def _default_workers(self) -> int:
        """The most workers, up to DEFAULT_WORKERS, whose batches leave the budget room for a
        full fetch; 1 when none does. Depends on the budget and the store, not the machine."""
        for workers in range(DEFAULT_WORKERS, 0, -1):
            if self._fits(workers) >= min(self._target_cells(), self.n_cells):
                return workers
        return 1

    def _buffer_cells(self, requested: int | None, workers: int) -> int:
        """Cells per fetch: what the budget holds beside the batches of ``workers`` threads
        (at most the target), or ``requested``; refused when not even one block fits."""
        fits = self._fits(workers)
        cells = requested if requested is not None else min(fits, self._target_cells())
        if fits < self.block_size or cells > fits:
            need = int(self._batch_bytes(workers)
                       + 3 * max(cells, self.block_size) * self._fetch_bytes_per_cell())
            raise UserError(
                f"memory_budget_bytes={self.memory_budget_bytes} is too small for batch_size "
                f"{self.batch_size}, block_size {self.block_size}, buffer_cells {cells} and "
                f"{workers} workers",
                f"raise it to at least {need} or lower batch_size, block_size, buffer_cells "
                "or workers",
            )
        return max(self.block_size, cells // self.block_size * self.block_size)

    def _compile_gather(self) -> None:
        """Load the compiled gather for this store's types now, not inside the first batch."""
        for name, dtype in self._dtypes.items():
            out = np.empty(1, dtype=np.int32 if name == "indices" else np.float32)
            gather_runs(
                np.zeros(1, dtype=dtype), np.zeros(1, np.int64), np.ones(1, np.int64), out, 0
            )

    def plan(self, epoch: int | None = None) -> EpochPlan:
        if 0 < self.n_cells < self.world_size:
            raise UserError(
                f"the split has {self.n_cells} cells, fewer than the {self.world_size} ranks",
                "train on a larger split or with fewer processes",
            )
        return EpochPlan(
            n_cells=self.n_cells,
            batch_size=self.batch_size,
            block_size=self.block_size,
            fetch_blocks=self.buffer_cells // self.block_size,
            seed=self.seed,
            epoch=self.epoch if epoch is None else epoch,
            rank=self.rank,
            world_size=self.world_size,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
            weights=self._weights,
        )

    def set_epoch(self, epoch: int) -> None:
        """Iterate epoch ``epoch`` next; a state loaded for that same epoch still holds."""
        if int(epoch) != self.epoch:
            self._start_batch = 0
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.plan())

    # -- resuming ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self._start_batch + self._yielded,
            "seed": self.seed,
            "split": self.split_name,
            "n_cells": self.n_cells,
            "batch_size": self.batch_size,
            "block_size": self.block_size,
            "buffer_cells": self.buffer_cells,
            "rank": self.rank,
            "world_size": self.world_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "sampler": self.sampler,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at the batch after the last one handed out when ``state`` was taken.

        The order of an epoch is fixed by the settings in ``state``. ``buffer_cells`` (cells
        per fetch) is taken over from ``state`` unless this loader was given its own, so a run
        resumes on a machine with another core count or memory budget; the rest must agree.
        """
        mine = self.state_dict()
        adopt = () if self._buffer_requested else ("buffer_cells",)
        differ = [k for k in mine if k not in ("epoch", "batch", *adopt)
                  and state.get(k) != mine[k]]
        if differ:
            raise UserError(
                f"loader state was saved with different settings ({', '.join(differ)})",
                "resume with the same split, batch_size, block_size, buffer_cells, seed and ranks",
            )
        if "buffer_cells" in adopt and state["buffer_cells"] != self.buffer_cells:
            self.buffer_cells = self._buffer_cells(int(state["buffer_cells"]), self.workers)
        self.epoch = int(state["epoch"])
        self._start_batch = int(state["batch"])
        self._yielded = 0

    # -- iteration ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        plan = self.plan()
        start = self._start_batch
        self._yielded = 0
        results: queue.Queue = queue.Queue(maxsize=self.prefetch_batches)
        stop = threading.Event()
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ssl-census-loader")
        producer = threading.Thread(
            target=self._produce,
            args=(plan, start, pool, results, stop),
            daemon=True,
            name="ssl-census-loader-plan",
        )
        producer.start()
        try:
            while True:
                item = results.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                batch = self._to_device(item.result())
                self._yielded += 1
                yield batch
            self._start_batch = 0
            self._yielded = 0
        finally:
            stop.set()
            while producer.is_alive():
                try:
                    results.get_nowait()
                except queue.Empty:
                    producer.join(0.05)
            pool.shutdown(wait=True, cancel_futures=True)

    def _put(self, results: queue.Queue, item: Any, stop: threading.Event) -> bool:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(
        self,
        plan: EpochPlan,
        start_batch: int,
        pool: ThreadPoolExecutor,
        results: queue.Queue,
        stop: threading.Event,
    ) -> None:
        try:
            self._produce_batches(plan, start_batch, pool, results, stop)
            self._put(results, None, stop)
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(results, e, stop)

    def _produce_batches(
        self,
        plan: EpochPlan,
        start_batch: int,
        pool: ThreadPoolExecutor,
        results: queue.Queue,
        stop: threading.Event,
    ) -> None:
        upcoming = _fetches_from(plan, start_batch * self.batch_size)
        current, following = next(upcoming, None), next(upcoming, None)
        self._advise(current)  # the first fetch's blocks all in flight at once: first batch
        loading = self._load(current[0], pool) if current else None
        self._advise(following)
        pieces: list[tuple[_FetchBuffer, np.ndarray]] = []
        filled = 0
        while current is not None:
            fetch, skip = current
            buf = self._wait(loading, fetch)
            current, following = following, next(upcoming, None)
            loading = self._load(current[0], pool) if current else None
            self._advise(following)
            order = fetch.order[skip:]
            pos = 0
            while pos < len(order):
                take = min(self.batch_size - filled, len(order) - pos)
                pieces.append((buf, order[pos : pos + take]))
                filled += take
                pos += take
                if filled == self.batch_size:
                    if not self._put(results, pool.submit(self._gather, pieces), stop):
                        return
                    pieces, filled = [], 0
            if stop.is_set():
                return
        if pieces:
            self._put(results, pool.submit(self._gather, pieces), stop)

    def _advise(self, upcoming: tuple[Fetch, int] | None) -> None:
        """Have the OS read the fetch after the one being loaded into its page cache now.

        On a cold cache (a store larger than the free memory) each block is a random read,
        and the workers' reads alone keep only a few requests in flight; hinting a whole fetch
        ahead lets the disk work on all its blocks at once while the current fetch
        decompresses. Costs nothing when the bytes are cached already."""
        if upcoming is None:
            return
        fetch = upcoming[0]
        lo, hi = self.indptr[fetch.starts], self.indptr[fetch.stops]
        for a in self._arrays:
            for b in np.flatnonzero(hi > lo):
                self.reader.will_need(a, int(lo[b]), int(hi[b]))

    def _load(
        self, fetch: Fetch, pool: ThreadPoolExecutor
    ) -> tuple[dict[str, np.ndarray], list[Future]]:
        """Start decompressing a fetch's blocks into fresh buffers, a task per block and array."""
        lo, hi = self.indptr[fetch.starts], self.indptr[fetch.stops]
        sizes = hi - lo
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        total = int(offsets[-1])
        arrays = {a: self._pool.take(total, self._dtypes[a])[:total] for a in self._arrays}
        futures = [
            pool.submit(
                self.reader.read_into,
                a,
                int(lo[b]),
                int(hi[b]),
                arrays[a][offsets[b] : offsets[b + 1]],
            )
            for b in range(len(sizes))
            for a in self._arrays
            if sizes[b]
        ]
        return arrays, futures

    def _wait(
        self, loading: tuple[dict[str, np.ndarray], list[Future]] | None, fetch: Fetch
    ) -> _FetchBuffer:
        assert loading is not None
        arrays, futures = loading
        for f in futures:
            f.result()
        rows = fetch.rows
        lengths = self.indptr[rows + 1] - self.indptr[rows]
        starts = np.zeros(len(rows), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        buffer = _FetchBuffer(arrays, starts, lengths, rows)
        weakref.finalize(buffer, self._pool.give, [a.base for a in arrays.values()])
        return buffer

    def _gather(self, pieces: list[tuple[_FetchBuffer, np.ndarray]]) -> _HostBatch:
        """Copy the batch's rows out of their fetch buffers (runs on a worker thread)."""
        lengths = np.concatenate([buf.lengths[sel] for buf, sel in pieces])
        rows = np.concatenate([buf.rows[sel] for buf, sel in pieces])
        nnz = int(lengths.sum())
        indices = self._host_array(nnz, torch.int32)
        values = {lay: self._host_array(nnz, torch.float32) for lay in self.layers}
        for name, out in (("indices", indices), *((LAYER_ARRAYS[k], v) for k, v in values.items())):
            pos, out_np = 0, out.numpy()
            for buf, sel in pieces:
                pos = gather_runs(buf.arrays[name], buf.starts[sel], buf.lengths[sel], out_np, pos)
        indptr = torch.from_numpy(row_pointer(lengths, np.int32))
        if self.device.type == "cuda":
            indptr = indptr.pin_memory()
        obs = {col: torch.from_numpy(arr[rows]) for col, arr in self._obs.items()}
        return _HostBatch(rows, indptr, indices, values, obs)

    def _host_array(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        """A batch output array: pinned for CUDA (torch caches pinned blocks itself); on the
        CPU a pooled array that returns to the pool when the batch's tensors are freed."""
        if self.device.type == "cuda":
            return torch.empty(n, dtype=dtype, pin_memory=True)
        base = self._out_pool.take(n, np.dtype(np.int32 if dtype == torch.int32 else np.float32))
        view = base[:n]
        weakref.finalize(view, self._out_pool.give, [base])
        return torch.from_numpy(view)

    def _csr(
        self, host: _HostBatch, layer: str, device: torch.device | None = None
    ) -> torch.Tensor:
        dev = device or torch.device("cpu")
        nb = device is not None and device.type == "cuda"
        return csr_tensor(host.indptr.to(dev, non_blocking=nb),
                          host.indices.to(dev, non_blocking=nb),
                          host.values[layer].to(dev, non_blocking=nb),
                          (len(host.rows), self.n_genes))

    def _to_device(self, host: _HostBatch) -> Batch:
        dev = self.device
        nb = dev.type == "cuda"
        layers = {}
        for lay in self.layers:
            csr = self._csr(host, lay, None if dev.type == "cpu" else dev)
            layers[lay] = csr.to_dense() if self.dense else csr
        return Batch(
            index=torch.from_numpy(host.rows).to(dev, non_blocking=nb),
            obs={k: v.to(dev, non_blocking=nb) for k, v in host.obs.items()},
            layers=layers,
        )

    def close(self) -> None:
        self._pool.clear()
        self._out_pool.clear()
        self.reader.close()

"""Host memory of :func:`scg.diagnostics.gradient_samples`: glibc's heap between chunks, and result reuse.

Two mechanisms, both for CPU devices and both measured in ``docs/benchmarks.md`` (case 4):
:func:`_settle_allocator` lets glibc keep a chunk's freed intermediates in the heap, and
:func:`_result` hands a dropped earlier result's memory to the next call of that size.
"""

from __future__ import annotations

import platform
import sys
import threading
from typing import Callable, Optional

import torch
from torch import Tensor

#: glibc's ceiling on its dynamic mmap threshold on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``,
#: ``4 MiB · sizeof(long)``; mallopt(3)).
_GLIBC_MMAP_THRESHOLD_MAX: int = 32 << 20
_allocator_settled: bool = False


def _settle_allocator(device: torch.device) -> bool:
    """Let glibc keep a chunk's freed intermediates in the heap; once per process, CPU only.

    glibc malloc serves a block of at least its *mmap threshold* (initially 128 KiB) with a
    fresh ``mmap`` and returns it to the OS on free; it raises the threshold to the size of
    each freed mmapped block up to 32 MiB, and trims the heap whenever more than twice the
    threshold lies free at its top (mallopt(3), "dynamic mmap threshold"). Between two
    chunks of :func:`gradient_samples` the chunk's intermediates (tens of MB) are freed, so
    with the threshold a chunk's largest tensor sets (≈ 11 MB in case 4 of
    ``docs/benchmarks.md``) glibc trims them and every chunk page-faults its memory in again
    (3,000–7,500 faults per 1000 estimates; at 2–4 µs a fault on a VM, a quarter of the
    call). Allocating and freeing one block just under the 32 MiB ceiling moves the
    threshold to the ceiling by glibc's own rule — as freeing any 32 MB tensor in the
    process would — so blocks up to 32 MiB come from the heap and up to 64 MiB of freed
    memory stays resident for reuse. No setting is changed (``mallopt`` is not called, the
    threshold stays dynamic); the cost is that resident memory. Does nothing on another C
    library, on a 32-bit build or for a non-CPU device. Returns whether the block was freed
    now.
    """
    global _allocator_settled
    if _allocator_settled or device.type != "cpu":
        return False
    _allocator_settled = True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or sys.maxsize <= 2**32:
        return False
    block = torch.empty(_GLIBC_MMAP_THRESHOLD_MAX - (64 << 10), dtype=torch.uint8)
    del block
    return True


#: Results of :func:`gradient_samples` whose memory is kept for reuse: CPU results of at
#: least this many bytes (below it glibc's heap already keeps freed blocks, see above).
_POOL_MIN_BYTES: int = _GLIBC_MMAP_THRESHOLD_MAX
#: At most this many such results are tracked: two, so that ``g = gradient_samples(...)`` in
#: a loop — the previous ``g`` still alive during the call — alternates between two buffers.
_POOL_SIZE: int = 2
_pool: list["_Pooled"] = []  # oldest first
_pool_lock = threading.Lock()
_storage_use_count: Optional[Callable[[int], int]] = getattr(torch._C, "_storage_Use_Count", None)


class _Pooled:
    """One tracked result buffer: its storage and what it looked like when the pool took it.

    Whether anything outside refers to the buffer is read from two counts: the C++ use count
    of the storage (tensors and views on it; the pool's storage object holds one) must be 1,
    and the Python reference count of that storage object — torch keeps one Python object per
    storage, so a caller holding ``g.untyped_storage()`` holds the pool's object — must be
    that of a storage nothing else refers to, measured once on a throwaway storage by the
    same method (:func:`_free_refs`).
    """

    __slots__ = ("storage", "ptr", "nbytes")

    def __init__(self, storage: torch.UntypedStorage) -> None:
        self.storage = storage
        self.ptr = storage.data_ptr()
        self.nbytes = storage.nbytes()

    def python_refs(self) -> int:
        return sys.getrefcount(self.storage)

    def intact(self) -> bool:
        """Still the memory it was: not resized or swapped, not moved to shared memory."""
        s = self.storage
        return s.data_ptr() == self.ptr and s.nbytes() == self.nbytes and not s.is_shared()

    def unused(self) -> bool:
        """Nothing but the pool refers to it (no tensor, view, storage or NumPy array alive)."""
        if _storage_use_count is None:  # never pooled then (see _result); kept for type checkers
            return False
        return _storage_use_count(self.storage._cdata) == 1 and self.python_refs() == _free_refs()


_free_refs_value: Optional[int] = None


def _free_refs() -> int:
    """:meth:`_Pooled.python_refs` of an entry whose storage nothing else refers to (measured once)."""
    global _free_refs_value
    if _free_refs_value is None:
        probe = _Pooled(torch.empty(1).untyped_storage())
        _free_refs_value = probe.python_refs()
    return _free_refs_value


def _result(shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised ``[num, P]`` result; on a CPU device, in a dropped earlier result's memory when possible.

    A fresh CPU result above glibc's 32 MiB mmap ceiling is mapped from the operating system on
    every call and page-faults on first write (≈ 25 ms for 50 MB on the benchmark machine,
    ``docs/benchmarks.md`` case 4). The last :data:`_POOL_SIZE` results of at least
    :data:`_POOL_MIN_BYTES` are tracked; one of exactly the size needed that nothing refers to
    any more (:meth:`_Pooled.unused`) and that is still the memory it was (not resized, not
    moved to shared memory) is handed out again, as a new tensor (not a view) on that
    storage. Claiming happens under a lock, so concurrent calls never share a buffer. The
    cost: up to :data:`_POOL_SIZE` dropped results' memory stays allocated for reuse. Other
    devices (CUDA has its caching allocator) and smaller results get ``torch.empty``.
    """
    nbytes = shape[0] * shape[1] * dtype.itemsize
    if device.type != "cpu" or nbytes < _POOL_MIN_BYTES or _storage_use_count is None:
        return torch.empty(shape, dtype=dtype, device=device)
    with _pool_lock:
        _pool[:] = [e for e in _pool if e.intact()]
        for i, entry in enumerate(_pool):
            if entry.nbytes == nbytes and entry.unused():
                _pool.append(_pool.pop(i))  # most recently used last
                return torch.empty(0, dtype=dtype).set_(entry.storage, 0, shape)
        result = torch.empty(shape, dtype=dtype)
        _pool.append(_Pooled(result.untyped_storage()))
        if len(_pool) > _POOL_SIZE:  # forget a dropped buffer first (frees it), else the oldest
            unused = [i for i, e in enumerate(_pool[:-1]) if e.unused()]
            del _pool[unused[0] if unused else 0]
        return result

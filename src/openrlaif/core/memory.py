"""The C allocator's policy for freed memory, for the CLI's process.

glibc's malloc gives every block of 32 MB or more its own ``mmap`` and returns it on free, and trims the heap's
top whenever a few MB lie free there. A training step or a decoding loop frees and re-allocates the same large
tensors (logits, activations) hundreds of times, so the kernel maps, zeroes and unmaps the same pages again and
again: system time, and page faults on the critical path of both cores. ``keep_freed_memory`` tells malloc to serve
every block from its heap and to keep what is freed there for the next allocation (``mallopt``), which is what
jemalloc/tcmalloc setups do for PyTorch on CPU.

The price is peak RSS, and it is not the same for every stage: the eval stage's long answers (a KV cache grown
one token at a time, benchmarks at 128 tokens) fragment a heap that never hands blocks back, so the demo's eval
held 5.7 GB under the policy against 4.5 GB without it, for no measured gain in its time (docs/benchmarks.md,
session 36). ``large_blocks_from_heap(False)`` gives such a stage glibc's default back (the pipeline does so
for eval; ``pipeline.release_memory`` trims what the earlier stages freed).

Only the ``rlaif`` command calls ``keep_freed_memory`` (a library user's process keeps its own allocator
policy); set ``OPENRLAIF_MALLOC=system`` to leave glibc's defaults. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

# mallopt(3) parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

DEFAULT_MMAP_MAX = 65536  # glibc's own limit on blocks mapped at once
LARGEST_MMAP_THRESHOLD = 32 << 20  # the highest glibc takes; its dynamic threshold climbs to it as blocks are freed
TOP_PAD_BYTES = 64 << 20  # grow the heap 64 MB past each request: fewer brk calls while a stage warms up
NEVER = 2**31 - 1  # mallopt takes an int: ~2 GB free at the heap's top before it is given back

_state = {"on": False}  # whether keep_freed_memory took in this process


@functools.cache
def _mallopt():
    """glibc's ``mallopt``, looked up once; None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def keep_freed_memory(environ=os.environ) -> bool:
    """Serve large blocks from the heap and keep freed memory for reuse (see the module docstring). True when the
    allocator took the settings; False off glibc or with ``OPENRLAIF_MALLOC=system``."""
    if environ.get("OPENRLAIF_MALLOC", "").lower() == "system":
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    _state["on"] = all(mallopt(param, value) == 1 for param, value in
                       ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER), (M_TOP_PAD, TOP_PAD_BYTES)))
    return _state["on"]


def large_blocks_from_heap(on: bool) -> bool:
    """Where ``keep_freed_memory`` took: from now on serve blocks of 32 MB or more from the heap (``on``), or give
    each its own mapping again, returned on free, as glibc does once its dynamic threshold has climbed (the
    threshold is set to that top, 32 MB: a fixed trim threshold stops glibc from moving it). Returns whether
    anything was set."""
    mallopt = _mallopt() if _state["on"] else None
    if mallopt is None:
        return False
    if on:
        return mallopt(M_MMAP_MAX, 0) == 1
    return mallopt(M_MMAP_THRESHOLD, LARGEST_MMAP_THRESHOLD) == 1 and mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX) == 1

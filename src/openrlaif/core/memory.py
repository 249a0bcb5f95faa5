"""The C allocator's policy for freed memory, for the CLI's process.

glibc's malloc gives every block of 32 MB or more its own ``mmap`` and returns it on free, and trims the heap's
top whenever 128 KB lie free there. A training step or a decoding loop frees and re-allocates the same large
tensors (logits, activations, a growing KV cache) hundreds of times, so the kernel maps, zeroes and unmaps the same
pages again and again: system time, and page faults on the critical path of both cores. ``keep_freed_memory``
tells malloc to serve every block from its heap and to keep what is freed there for the next allocation
(``mallopt``), which is what jemalloc/tcmalloc setups do for PyTorch on CPU. The price is peak RSS: memory freed
by one stage stays mapped for the next (docs/benchmarks.md has the round's figures).

Only the ``rlaif`` command calls it (a library user's process keeps its own allocator policy); set
``OPENRLAIF_MALLOC=system`` to leave glibc's defaults. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt(3) parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4

TOP_PAD_BYTES = 64 << 20  # grow the heap 64 MB past each request: fewer brk calls while a stage warms up
NEVER = 2**31 - 1  # mallopt takes an int: ~2 GB free at the heap's top before it is given back


def keep_freed_memory(environ=os.environ) -> bool:
    """Serve large blocks from the heap and keep freed memory for reuse (see the module docstring). True when the
    allocator took the settings; False off glibc or with ``OPENRLAIF_MALLOC=system``."""
    if environ.get("OPENRLAIF_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER), (M_TOP_PAD, TOP_PAD_BYTES)))

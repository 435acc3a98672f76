"""The one place for Numba JIT options.

``nopython``: no silent fallback to slow object mode. ``cache``: compiled code is kept on disk so
only the first start after an install pays for compilation. ``nogil``: kernels release the GIL,
so a kernel in a worker thread runs beside the event loop.
"""

JIT = dict(nopython=True, cache=True, nogil=True)

# Kernels that allocate nothing (the cache directory's) run without Numba's reference counting:
# with it, every helper call increments and decrements the count of each array argument
# atomically (measured: ~40% of the time of a miss). Their helpers on the miss path are also
# inlined at Numba IR level (``inline='always'``): a call passing a dozen array structs cost more
# than the work (measured: 3x on a miss-only trace).
JIT_NO_REFCOUNT = dict(JIT, _nrt=False)

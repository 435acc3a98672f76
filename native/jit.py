"""The one place for Numba JIT options.

``nopython``: no silent fallback to slow object mode. ``cache``: compiled code is kept on disk so
only the first start after an install pays for compilation. ``nogil``: kernels release the GIL,
so a kernel in a worker thread runs beside the event loop.
"""

JIT = dict(nopython=True, cache=True, nogil=True)

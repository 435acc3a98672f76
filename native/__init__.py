"""vmblock.native: the Numba kernels of the hot path (batched per-block work over numpy arrays).

Kernels are private and wrapped by validating Python functions in the modules that use them;
every kernel takes its JIT options from ``vmblock.native.jit`` so caching and GIL release are
decided in one place.
"""

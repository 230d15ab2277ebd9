"""Numba kernels: ``@njit(cache=True)`` functions over numpy arrays and scalars only.

Every kernel also runs as plain Python under ``NUMBA_DISABLE_JIT=1``.
"""

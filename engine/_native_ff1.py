"""FF1's ten Feistel rounds for one input in one compiled call (the scan path's verify).

The Python rounds of :meth:`engine.fpe.FF1._fast_rounds` cost ~0.5 µs each: the AES call
itself is ~0.14 µs, the rest is big-integer work and call overhead. Here a numba function
runs all ten rounds, calling OpenSSL's ``EVP_EncryptUpdate`` (AES-ECB, one block a round)
directly, with 64-bit arithmetic: ~1.6 µs for a decrypt instead of ~5.6 µs.

AES is still OpenSSL's (constant time, AES-NI), from the same ``libcrypto`` that Python's
own ``hashlib`` and ``ssl`` use, through an ``EVP_CIPHER_CTX`` that holds this key's
schedule and is freed (and cleansed by OpenSSL) with its owner. It only applies where
every half and modulus fits 56 bits (every Wuma code format); elsewhere, or when no
``libcrypto`` can be loaded, :mod:`engine.fpe` keeps its Python rounds. Both paths are
tested against each other and against the NIST samples.

NOTE: numba cannot cache a function that calls through a ctypes pointer, so the kernel is
compiled (~0.4 s) the first time a process asks for it: the scan pipeline does so when it
is built (in a server worker: before it takes requests), one-off CLI commands do not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import weakref

import numpy as np

__all__ = ["NativeRounds", "native_rounds", "LIMIT"]

log = logging.getLogger("wuma.fpe")

#: Halves and moduli must stay below this for the 64-bit arithmetic (y * 256 + byte).
LIMIT = 1 << 56
_KERNEL_LOCK = threading.Lock()
_KERNEL: list = []  # [kernel, libcrypto] once built, [None, None] if it cannot be


def _libcrypto():
    for name in (ctypes.util.find_library("crypto"), "libcrypto.so.3", "libcrypto.so.1.1"):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            lib.EVP_CIPHER_CTX_new.restype = ctypes.c_void_p
            lib.EVP_CIPHER_CTX_new.argtypes = []
            lib.EVP_CIPHER_CTX_free.restype = None
            lib.EVP_CIPHER_CTX_free.argtypes = [ctypes.c_void_p]
            lib.EVP_CIPHER_CTX_set_padding.argtypes = [ctypes.c_void_p, ctypes.c_int]
            lib.EVP_EncryptInit_ex.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                               ctypes.c_char_p, ctypes.c_char_p]
            lib.EVP_EncryptUpdate.restype = ctypes.c_int
            lib.EVP_EncryptUpdate.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                              ctypes.c_void_p, ctypes.c_int]
            for bits in (128, 192, 256):
                getattr(lib, f"EVP_aes_{bits}_ecb").restype = ctypes.c_void_p
            return lib
        except (OSError, AttributeError):
            continue
    return None


def _build():
    from numba import njit

    lib = _libcrypto()
    if lib is None:
        return None, None
    update = lib.EVP_EncryptUpdate
    byte = np.uint64(0xFF)
    base = np.uint64(256)

    # NOTE: compiled here, for these types (eagerly: the caller pays it once, up front),
    # and holding the GIL: one caller at a time uses the scratch and the context.
    @njit("UniTuple(int64, 2)(int64, uint64[:, ::1], int64, int64, boolean, int64, uint8[::1])",
          nogil=False)
    def rounds(ctx, table, a, b, encrypt, d, scratch):
        # table[i] = (block constant, high 64 bits; low 64 bits; modulus) of round i;
        # scratch = 16 bytes in, 32 bytes out, 4 bytes out-length
        blk = scratch[:16]
        out = scratch[16:48]
        outl = scratch.ctypes.data + 48
        x_a, x_b = np.uint64(a), np.uint64(b)
        n = table.shape[0]
        for k in range(n):
            i = k if encrypt else n - 1 - k
            hi, lo, m = table[i, 0], table[i, 1] ^ (x_b if encrypt else x_a), table[i, 2]
            for j in range(8):
                sh = np.uint64(56 - 8 * j)
                blk[j] = np.uint8((hi >> sh) & byte)
                blk[8 + j] = np.uint8((lo >> sh) & byte)
            if update(ctx, out.ctypes.data, outl, blk.ctypes.data, 16) != 1:
                return -1, -1
            y = np.uint64(0)
            for j in range(d):
                y = (y * base + np.uint64(out[j])) % m
            if encrypt:
                x_a, x_b = x_b, (x_a % m + y) % m
            else:
                x_b, x_a = x_a, (x_b % m + m - y) % m
        return np.int64(x_a), np.int64(x_b)

    return rounds, lib


def _kernel():
    if not _KERNEL:
        with _KERNEL_LOCK:
            if not _KERNEL:
                try:
                    kernel, lib = _build()
                except Exception:  # pragma: no cover - numba or ctypes refused: Python rounds
                    log.exception("compiled FF1 rounds unavailable; using the Python rounds")
                    kernel, lib = None, None
                _KERNEL[:] = [kernel, lib]
    return _KERNEL


class NativeRounds:
    """The ten rounds of FF1 under one AES key, for layouts whose numbers fit 56 bits."""

    def __init__(self, key: bytes, kernel, lib) -> None:
        self._kernel = kernel
        ctx = lib.EVP_CIPHER_CTX_new()
        if not ctx:
            raise MemoryError("EVP_CIPHER_CTX_new failed")
        cipher = getattr(lib, f"EVP_aes_{8 * len(key)}_ecb")()
        if lib.EVP_EncryptInit_ex(ctx, cipher, None, bytes(key), None) != 1:
            lib.EVP_CIPHER_CTX_free(ctx)
            raise ValueError("OpenSSL refused the AES key")
        lib.EVP_CIPHER_CTX_set_padding(ctx, 0)
        self._ctx = ctx
        self._free = weakref.finalize(self, lib.EVP_CIPHER_CTX_free, ctx)
        self._scratch = np.zeros(16 + 32 + 8, np.uint8)

    @staticmethod
    def constants(rounds: tuple, d: int) -> np.ndarray | None:
        """The kernel's table from a layout's ``rounds`` (each ``(block constant,
        modulus)``): per round the constant's high and low 64 bits and the modulus; None
        when a number could reach 56 bits."""
        if not rounds or d > 16 or max(m for _, m in rounds) >= LIMIT:
            return None
        return np.array([(c >> 64, c & (2**64 - 1), m) for c, m in rounds], np.uint64)

    def run(self, table: np.ndarray, d: int, a: int, b: int, encrypt: bool) -> tuple[int, int]:
        return _checked(self._kernel(self._ctx, table, a, b, encrypt, d, self._scratch))

    def bound(self, table: np.ndarray, d: int, encrypt: bool):
        """``run`` with everything but the two halves fixed: ``f(a, b) -> (a, b)``."""
        kernel, ctx, scratch = self._kernel, self._ctx, self._scratch
        return lambda a, b: _checked(kernel(ctx, table, a, b, encrypt, d, scratch))


def _checked(halves: tuple[int, int]) -> tuple[int, int]:
    if halves[0] < 0:  # pragma: no cover - OpenSSL failing an ECB block on a valid context
        raise RuntimeError("OpenSSL AES failed")
    return halves


def native_rounds(key: bytes) -> NativeRounds | None:
    """Compiled rounds for ``key``, or None where they cannot run (no libcrypto, no numba)."""
    kernel, lib = _kernel()
    if kernel is None:
        return None
    return NativeRounds(key, kernel, lib)

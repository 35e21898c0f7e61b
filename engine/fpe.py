"""FF1 format-preserving encryption (NIST SP 800-38G, section 5.1).

Two paths over one key schedule:

* ``FF1.encrypt`` / ``FF1.decrypt``: one string at a time, Python integers, used to
  verify a single scanned code in a few microseconds.
* ``FF1.encrypt_many`` / ``FF1.decrypt_many`` (and the private ``_encrypt_halves``
  used by the code generator): millions of inputs at once. Numba kernels do the numeral
  arithmetic; each Feistel round is **one** ``update_into`` AES-ECB call over all
  inputs. With a fixed tweak the CBC-MAC prefix ``P || Q[:-16]`` is the same for every
  input, so it is computed once and each round costs exactly one AES block per input.

AES is OpenSSL's, through ``cryptography`` (constant time, AES-NI); there is no
table-based AES here. A long-running verifier (the scan pipeline) can have the scalar
rounds compiled (:meth:`FF1.use_native_rounds`, engine/_native_ff1.py): the same
OpenSSL AES, called from numba.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from engine._native_ff1 import NativeRounds, native_rounds

__all__ = ["FF1", "NUMERAL_ALPHABET", "MIN_DOMAIN", "halves_to_text"]

#: Text alphabet for FF1 strings: a radix-r string uses the first r characters.
NUMERAL_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: NIST SP 800-38G Rev.1: radix^minlen >= 1,000,000.
MIN_DOMAIN = 1_000_000
_ROUNDS = 10
#: Inputs per AES call in the batch path: 64K blocks = 1 MiB, stays in L2/L3.
_CHUNK = 1 << 16
_MAX_BATCH_HALF = 1 << 56


def _workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 8))


@dataclass(frozen=True)
class _Layout:
    """Everything about FF1 that depends only on (radix, n, tweak)."""

    n: int
    u: int
    v: int
    b: int
    d: int
    mod_u: int
    mod_v: int
    h: bytes  # CBC-MAC chain value after P and the constant blocks of Q
    tail_const: int  # constant bytes of the last Q block, as an int (variable part zero)
    hx: int  # h xor tail_const: the last block before the round number and NUM(B)
    #: (hx ^ [i] shifted into place, modulus) of rounds 0..9: the fast path's constants
    rounds: tuple = ()
    #: the same as a table for the compiled rounds, or None (see engine._native_ff1)
    native: np.ndarray | None = field(default=None, compare=False)

    @property
    def fast(self) -> bool:
        """One AES block per round: single-block tail and d <= 16."""
        return bool(self.h) and self.d <= 16

    @property
    def batchable(self) -> bool:
        return self.b <= 7 and self.mod_v < _MAX_BATCH_HALF


def halves_to_text(a: int, b: int, n: int, radix: int, alphabet: str) -> str:
    """STR(a) over n//2 numerals followed by STR(b) over the rest, in ``alphabet``."""
    out = []
    for val, length in ((b, n - n // 2), (a, n // 2)):
        for _ in range(length):
            val, r = divmod(val, radix)
            out.append(alphabet[r])
    return "".join(reversed(out))


def _pow2_bits(m: int) -> int:
    return m.bit_length() - 1 if m & (m - 1) == 0 else 0


class FF1:
    """FF1 over AES-128/192/256 for any radix 2..62.

    >>> f = FF1(bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C"), 10)
    >>> f.encrypt("0123456789")
    '2433477484'
    """

    def __init__(self, key: bytes, radix: int) -> None:
        if not isinstance(key, (bytes, bytearray)):
            raise TypeError("key must be bytes")
        if len(key) not in (16, 24, 32):
            raise ValueError("key must be 16, 24 or 32 bytes (AES-128/192/256)")
        if not isinstance(radix, int) or isinstance(radix, bool):
            raise TypeError("radix must be an int")
        if not 2 <= radix <= len(NUMERAL_ALPHABET):
            raise ValueError(f"radix must be between 2 and {len(NUMERAL_ALPHABET)}")
        self._key = bytes(key)
        self._radix = radix
        self._cipher = Cipher(algorithms.AES(self._key), modes.ECB())
        self._local = threading.local()
        self._layouts: dict[tuple[int, bytes], _Layout] = {}
        self._native: NativeRounds | None = None
        self.min_length = max(2, math.ceil(math.log(MIN_DOMAIN) / math.log(radix) - 1e-12))
        while radix**self.min_length < MIN_DOMAIN:
            self.min_length += 1

    @property
    def radix(self) -> int:
        return self._radix

    def use_native_rounds(self) -> bool:
        """Run the scalar path's rounds compiled (engine._native_ff1: ~5.6 -> ~1.6 µs a
        decrypt) where the layout allows; False if this machine cannot (the Python rounds
        stay). Compiles once per process (~0.4 s): for long-running verifiers."""
        if self._native is None:
            self._native = native_rounds(self._key)
        return self._native is not None

    # -- AES plumbing -------------------------------------------------------------------
    def _ecb(self):
        enc = getattr(self._local, "enc", None)
        if enc is None:
            enc = self._local.enc = self._cipher.encryptor()
        return enc

    def _layout(self, n: int, tweak: bytes) -> _Layout:
        key = (n, tweak)
        lay = self._layouts.get(key)
        if lay is not None:
            return lay
        radix, t = self._radix, len(tweak)
        u, v = n // 2, n - n // 2
        b = ((radix**v - 1).bit_length() + 7) // 8
        d = 4 * ((b + 3) // 4) + 4
        p = bytes([1, 2, 1]) + radix.to_bytes(3, "big") + bytes([10, u % 256])
        p += n.to_bytes(4, "big") + t.to_bytes(4, "big")
        q_const = tweak + bytes((-t - b - 1) % 16)
        # The variable part [i]1 || NUM(B)_b starts at len(q_const); when it fits in the
        # last block, everything before that block is the same for every input.
        enc = self._ecb()
        if b + 1 <= 16:
            prefix = p + q_const[: len(q_const) - (15 - b)]
            h = bytes(16)
            for j in range(0, len(prefix), 16):
                h = enc.update(bytes(x ^ y for x, y in zip(h, prefix[j : j + 16])))
            tail = q_const[len(q_const) - (15 - b) :] + bytes(b + 1)
            tail_const = int.from_bytes(tail, "big")
        else:  # pragma: no cover - only for radix^v beyond 2^120
            h, tail_const = b"", 0
        hx = int.from_bytes(h, "big") ^ tail_const if h else 0
        rounds = tuple((hx ^ (i << (8 * b)), radix**v if i & 1 else radix**u) for i in range(_ROUNDS))
        lay = _Layout(n, u, v, b, d, radix**u, radix**v, h, tail_const, hx, rounds,
                      NativeRounds.constants(rounds, d) if h else None)
        if len(self._layouts) < 64:
            self._layouts[key] = lay
        return lay

    def _prf_y(self, lay: _Layout, tweak: bytes, rnd: int, num: int) -> int:
        """y = NUM(S) for round rnd with NUM_radix(B) = num."""
        enc = self._ecb()
        if lay.h:
            h = int.from_bytes(lay.h, "big")
            blk = h ^ lay.tail_const ^ (rnd << (8 * lay.b)) ^ num
            r = enc.update(blk.to_bytes(16, "big"))
        else:  # pragma: no cover - generic CBC-MAC for huge b
            t = len(tweak)
            p = bytes([1, 2, 1]) + self._radix.to_bytes(3, "big") + bytes([10, lay.u % 256])
            p += lay.n.to_bytes(4, "big") + t.to_bytes(4, "big")
            q = tweak + bytes((-t - lay.b - 1) % 16) + bytes([rnd]) + num.to_bytes(lay.b, "big")
            msg = p + q
            r = bytes(16)
            for j in range(0, len(msg), 16):
                r = enc.update(bytes(x ^ y for x, y in zip(r, msg[j : j + 16])))
        s = r
        j = 1
        while len(s) < lay.d:
            s += enc.update((int.from_bytes(r, "big") ^ j).to_bytes(16, "big"))
            j += 1
        return int.from_bytes(s[: lay.d], "big")

    # -- checks -------------------------------------------------------------------------
    def _check_tweak(self, tweak: bytes) -> bytes:
        if not isinstance(tweak, (bytes, bytearray)):
            raise TypeError("tweak must be bytes")
        if len(tweak) >= 2**32:
            raise ValueError("tweak too long")
        return bytes(tweak)

    def _check_length(self, n: int) -> None:
        if n < self.min_length:
            raise ValueError(
                f"FF1 needs radix^n >= {MIN_DOMAIN:,}: at radix {self._radix} the text must be "
                f"at least {self.min_length} numerals long"
            )
        if n > 2**32:
            raise ValueError("text too long for FF1")

    def _to_numerals(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError("text must be a str")
        alphabet = NUMERAL_ALPHABET[: self._radix]
        out = []
        for ch in text:
            i = alphabet.find(ch)
            if i < 0 or not ch:
                raise ValueError(f"text has a character outside the radix-{self._radix} alphabet")
            out.append(i)
        self._check_length(len(out))
        return out

    # -- scalar path --------------------------------------------------------------------
    def encrypt_int(self, a: int, b: int, n: int, tweak: bytes = b"") -> tuple[int, int]:
        """Encrypt halves given as integers: a = NUM(X[:n//2]), b = NUM(X[n//2:])."""
        lay = self._layout(n, tweak)
        if lay.fast:
            return self._fast_rounds(lay, a, b, True)
        for i in range(_ROUNDS):
            m = lay.mod_u if i % 2 == 0 else lay.mod_v
            c = (a + self._prf_y(lay, tweak, i, b)) % m
            a, b = b, c
        return a, b

    def decrypt_int(self, a: int, b: int, n: int, tweak: bytes = b"") -> tuple[int, int]:
        """Inverse of :meth:`encrypt_int`."""
        lay = self._layout(n, tweak)
        if lay.fast:
            return self._fast_rounds(lay, a, b, False)
        for i in range(_ROUNDS - 1, -1, -1):
            m = lay.mod_u if i % 2 == 0 else lay.mod_v
            c = (b - self._prf_y(lay, tweak, i, a)) % m
            b, a = a, c
        return a, b

    def int_decrypter(self, n: int, tweak: bytes = b""):
        """``f(a, b)`` = :meth:`decrypt_int` ``(a, b, n, tweak)``, for a verifier decrypting
        many inputs of one length. PERF: with compiled rounds (:meth:`use_native_rounds`,
        called first) the kernel is called directly, not through decrypt_int's layout
        lookup and two more calls: 1.6-1.9 -> 1.2 µs a decrypt."""
        lay = self._layout(n, tweak)
        if self._native is not None and lay.native is not None:  # (a native table: a fast layout)
            return self._native.bound(lay.native, lay.d, False)
        return lambda a, b: self.decrypt_int(a, b, n, tweak)

    def _fast_rounds(self, lay: _Layout, a: int, b: int, encrypt: bool) -> tuple[int, int]:
        # PERF: one code is verified per scan; this loop is ~2x faster than the generic
        # one (no per-round attribute lookups or slicing), and each round's constant
        # block and modulus come precomputed from the layout (~6.6 -> ~5 us a decrypt).
        if self._native is not None and lay.native is not None:
            return self._native.run(lay.native, lay.d, a, b, encrypt)
        upd = self._ecb().update
        drop = 8 * (16 - lay.d)
        frombytes = int.from_bytes
        if encrypt:
            for c, m in lay.rounds:
                a, b = b, (a + (frombytes(upd((c ^ b).to_bytes(16, "big")), "big") >> drop)) % m
        else:
            for c, m in reversed(lay.rounds):
                b, a = a, (b - (frombytes(upd((c ^ a).to_bytes(16, "big")), "big") >> drop)) % m
        return a, b

    def _crypt_text(self, text: str, tweak: bytes, encrypt: bool) -> str:
        tweak = self._check_tweak(tweak)
        x = self._to_numerals(text)
        n = len(x)
        u = n // 2
        a = b = 0
        for d in x[:u]:
            a = a * self._radix + d
        for d in x[u:]:
            b = b * self._radix + d
        a, b = (self.encrypt_int if encrypt else self.decrypt_int)(a, b, n, tweak)
        return halves_to_text(a, b, n, self._radix, NUMERAL_ALPHABET)

    def encrypt(self, text: str, tweak: bytes = b"") -> str:
        """Encrypt a numeral string over ``NUMERAL_ALPHABET[:radix]``."""
        return self._crypt_text(text, tweak, True)

    def decrypt(self, text: str, tweak: bytes = b"") -> str:
        """Decrypt a numeral string over ``NUMERAL_ALPHABET[:radix]``."""
        return self._crypt_text(text, tweak, False)

    # -- batch path ---------------------------------------------------------------------
    def _check_matrix(self, numerals: np.ndarray) -> np.ndarray:
        if not isinstance(numerals, np.ndarray):
            raise TypeError("numerals must be a numpy array")
        if numerals.ndim != 2:
            raise ValueError("numerals must be a 2-D array (inputs x numerals)")
        if numerals.dtype.kind not in "iu":
            raise TypeError(f"numerals must be an array of integers, not {numerals.dtype}")
        self._check_length(numerals.shape[1])
        # NOTE: checked before the conversion to uint8, which wraps (256 would be read as 0)
        if numerals.size and ((numerals.dtype.kind == "i" and int(numerals.min()) < 0)
                              or int(numerals.max()) >= self._radix):
            raise ValueError(f"numerals must be from 0 to {self._radix - 1} "
                             f"(below the radix {self._radix})")
        return np.ascontiguousarray(numerals, dtype=np.uint8)

    def _many(self, numerals: np.ndarray, tweak: bytes, encrypt: bool) -> np.ndarray:
        from engine import _kernels as K

        tweak = self._check_tweak(tweak)
        arr = self._check_matrix(numerals)
        count, n = arr.shape
        lay = self._layout(n, tweak)
        if not lay.batchable:
            # Halves above 2^56 do not fit the uint64 kernels: fall back to the scalar path.
            out = np.empty_like(arr)
            for k in range(count):
                txt = "".join(NUMERAL_ALPHABET[int(x)] for x in arr[k])
                res = self._crypt_text(txt, tweak, encrypt)
                out[k] = [NUMERAL_ALPHABET.index(ch) for ch in res]
            return out
        a = np.empty(count, np.uint64)
        b = np.empty(count, np.uint64)
        K.numerals_to_halves(arr, lay.u, self._radix, a, b)
        self._crypt_halves(a, b, n, tweak, encrypt)
        out = np.empty_like(arr)
        K.halves_to_numerals(a, b, lay.u, self._radix, out)
        return out

    def encrypt_many(self, numerals: np.ndarray, tweak: bytes = b"") -> np.ndarray:
        """Encrypt a (count, n) integer matrix of numerals (each < radix), one row per input."""
        return self._many(numerals, tweak, True)

    def decrypt_many(self, numerals: np.ndarray, tweak: bytes = b"") -> np.ndarray:
        """Inverse of :meth:`encrypt_many`."""
        return self._many(numerals, tweak, False)

    def _crypt_halves(self, a: np.ndarray, b: np.ndarray, n: int, tweak: bytes,
                      encrypt: bool, workers: int | None = None) -> None:
        """Encrypt/decrypt uint64 halves in place, chunked over threads.

        PERF: numba kernels and OpenSSL's update_into both release the GIL, so two
        threads give ~2x on this 2-core machine.
        """
        count = a.shape[0]
        lay = self._layout(n, tweak)
        chunks = [(s, min(s + _CHUNK, count)) for s in range(0, count, _CHUNK)]
        workers = workers or _workers()
        if workers == 1 or len(chunks) == 1:
            self._crypt_chunks(a, b, lay, encrypt, chunks)
            return
        per = [chunks[i::workers] for i in range(workers)]
        with ThreadPoolExecutor(workers) as pool:
            for f in [pool.submit(self._crypt_chunks, a, b, lay, encrypt, p) for p in per]:
                f.result()

    def _crypt_chunks(self, a, b, lay: _Layout, encrypt: bool, chunks) -> None:
        from engine import _kernels as K

        enc = self._cipher.encryptor()
        size = max((e - s for s, e in chunks), default=0)
        blocks = np.empty((size, 2), np.uint64)
        # update_into wants room for one extra block; the kernels read the words in place.
        out_bytes = np.empty(size * 16 + 16, np.uint8)
        hxb = lay.hx.to_bytes(16, "big")
        hx0 = np.uint64(int.from_bytes(hxb[:8], "little"))
        hx1 = np.uint64(int.from_bytes(hxb[8:], "little"))
        pow_u, pow_v = _pow2_bits(lay.mod_u), _pow2_bits(lay.mod_v)
        mod_u, mod_v = np.uint64(lay.mod_u), np.uint64(lay.mod_v)
        for s, e in chunks:
            m = e - s
            ca, cb = a[s:e], b[s:e]
            blk = blocks[:m]
            ob = out_bytes[: m * 16 + 15]
            o = out_bytes[: m * 16].view(np.uint64).reshape(m, 2)
            rounds = range(_ROUNDS) if encrypt else range(_ROUNDS - 1, -1, -1)
            for i in rounds:
                even = i % 2 == 0
                K.ff1_prepare(cb if encrypt else ca, blk, hx0, hx1, lay.b, i)
                enc.update_into(blk.view(np.uint8).reshape(-1), ob)
                if encrypt:
                    K.ff1_finish_encrypt(o, ca, cb, lay.d, mod_u if even else mod_v,
                                         pow_u if even else pow_v)
                else:
                    K.ff1_finish_decrypt(o, ca, cb, lay.d, mod_u if even else mod_v,
                                         pow_u if even else pow_v)

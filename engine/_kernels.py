"""Numba kernels for the vectorised FF1 path and code rendering.

Private: callers go through :mod:`engine.fpe` and :mod:`engine.codes`, which validate
every argument first, so these kernels never see bad input.

All arithmetic is on ``uint64``. NOTE: numba turns ``uint64 op int64`` into float64,
so every constant that meets a uint64 is wrapped in ``np.uint64``.

Layout of one FF1 round block (16 bytes, the last CBC-MAC block of ``P || Q``)::

    bytes 0 .. 14-b   constant (end of tweak || zero pad), xor'ed with the chain value h
    byte  15-b        round number i
    bytes 16-b .. 15  NUM_radix(B) as b big-endian bytes

With ``b <= 7`` the variable part sits entirely in bytes 8..15, i.e. in the second
little-endian uint64 word of the block, so building a block is two word stores.
"""

import numpy as np
from numba import njit

_U8 = np.uint64(8)
_U32 = np.uint64(32)
_FF = np.uint64(0xFF)
_ONE = np.uint64(1)


@njit(inline="always")
def _bswap64(x):
    # PERF: LLVM folds this shift pattern into one bswap instruction.
    x = ((x & np.uint64(0x00FF00FF00FF00FF)) << _U8) | ((x >> _U8) & np.uint64(0x00FF00FF00FF00FF))
    x = ((x & np.uint64(0x0000FFFF0000FFFF)) << np.uint64(16)) | (
        (x >> np.uint64(16)) & np.uint64(0x0000FFFF0000FFFF)
    )
    return (x << _U32) | (x >> _U32)


@njit(inline="always")
def _y_mod(w0, w1, d, modulus, pow2_bits):
    """NUM(S[:d]) mod modulus, for d in (8, 12); S given as two LE words."""
    be0 = _bswap64(w0)
    if pow2_bits > 0:
        mask = (_ONE << np.uint64(pow2_bits)) - _ONE
        if d == 8:
            return be0 & mask
        be1 = _bswap64(w1)
        return ((be0 << _U32) | (be1 >> _U32)) & mask
    r = be0 % modulus
    if d == 12:
        be1 = _bswap64(w1)
        for s in range(4):
            byte = (be1 >> np.uint64(56 - 8 * s)) & _FF
            r = ((r << _U8) | byte) % modulus
    return r


@njit(cache=True, nogil=True)
def ff1_prepare(src, blocks, hx0, hx1, nbytes, rnd):
    """blocks[k] = h xor (const || rnd || NUM(src[k])_nbytes), as two LE words."""
    shift = np.uint64(8 * nbytes)
    r = np.uint64(rnd) << shift
    for k in range(src.shape[0]):
        blocks[k, 0] = hx0
        blocks[k, 1] = hx1 ^ _bswap64(r | src[k])


@njit(cache=True, nogil=True)
def ff1_finish_encrypt(out, a, b, d, modulus, pow2_bits):
    """c = (a + y) mod M; a, b = b, c."""
    for k in range(a.shape[0]):
        y = _y_mod(out[k, 0], out[k, 1], d, modulus, pow2_bits)
        c = a[k] + y
        if c >= modulus:
            c -= modulus
        a[k] = b[k]
        b[k] = c


@njit(cache=True, nogil=True)
def ff1_finish_decrypt(out, a, b, d, modulus, pow2_bits):
    """c = (b - y) mod M; b, a = a, c."""
    for k in range(a.shape[0]):
        y = _y_mod(out[k, 0], out[k, 1], d, modulus, pow2_bits)
        c = b[k] + modulus - y
        if c >= modulus:
            c -= modulus
        b[k] = a[k]
        a[k] = c


@njit(cache=True, nogil=True)
def numerals_to_halves(numerals, u, radix, a, b):
    """Horner: a = NUM_radix(X[:u]), b = NUM_radix(X[u:])."""
    n = numerals.shape[1]
    rad = np.uint64(radix)
    for k in range(numerals.shape[0]):
        x = np.uint64(0)
        for j in range(u):
            x = x * rad + np.uint64(numerals[k, j])
        a[k] = x
        x = np.uint64(0)
        for j in range(u, n):
            x = x * rad + np.uint64(numerals[k, j])
        b[k] = x


@njit(cache=True, nogil=True)
def halves_to_numerals(a, b, u, radix, numerals):
    n = numerals.shape[1]
    rad = np.uint64(radix)
    for k in range(a.shape[0]):
        x = a[k]
        for j in range(u - 1, -1, -1):
            numerals[k, j] = x % rad
            x //= rad
        x = b[k]
        for j in range(n - 1, u - 1, -1):
            numerals[k, j] = x % rad
            x //= rad


@njit(cache=True, nogil=True)
def payload_to_halves(role, batch, serial_start, count, serial_bits, batch_bits,
                      tag_bits, v_modulus, v_pow2_bits, a, b):
    """Split payload P = (role|batch|serial) << tag_bits into a = P // R^v, b = P mod R^v.

    P can exceed 64 bits, so for a non-power-of-two radix the split is a byte-wise long
    division of the 128-bit value (hi, lo).
    """
    head0 = (np.uint64(role) << np.uint64(batch_bits) | np.uint64(batch)) << np.uint64(serial_bits)
    t = np.uint64(tag_bits)
    for k in range(count):
        h = head0 | np.uint64(serial_start + k)
        if v_pow2_bits > 0:
            s = np.uint64(v_pow2_bits)
            mask = (_ONE << s) - _ONE
            if tag_bits >= v_pow2_bits:
                b[k] = np.uint64(0)
                a[k] = h << (t - s)
            else:
                b[k] = (h << t) & mask
                a[k] = h >> (s - t)
        else:
            # 128-bit P = h << t as (hi, lo), t < 64.
            if tag_bits == 0:
                hi = np.uint64(0)
                lo = h
            else:
                hi = h >> (np.uint64(64) - t)
                lo = h << t
            r = np.uint64(0)
            qhi = np.uint64(0)
            qlo = np.uint64(0)
            for s in range(16):
                if s < 8:
                    byte = (hi >> np.uint64(56 - 8 * s)) & _FF
                else:
                    byte = (lo >> np.uint64(56 - 8 * (s - 8))) & _FF
                r = (r << _U8) | byte
                qd = r // v_modulus
                r = r - qd * v_modulus
                qhi = (qhi << _U8) | (qlo >> np.uint64(56))
                qlo = (qlo << _U8) | qd
            a[k] = qlo
            b[k] = r


@njit(cache=True, nogil=True)
def render_codes(a, b, u, v, radix, pow2_bits, alphabet, prefix, out, col):
    """Write prefix char + u digits of a + v digits of b into out[k, col:col+1+u+v]."""
    rad = np.uint64(radix)
    for k in range(a.shape[0]):
        out[k, col] = prefix
        x = a[k]
        if pow2_bits > 0:
            sh = np.uint64(pow2_bits)
            m = (_ONE << sh) - _ONE
            for j in range(u, 0, -1):
                out[k, col + j] = alphabet[x & m]
                x >>= sh
            x = b[k]
            for j in range(u + v, u, -1):
                out[k, col + j] = alphabet[x & m]
                x >>= sh
        else:
            for j in range(u, 0, -1):
                out[k, col + j] = alphabet[x % rad]
                x //= rad
            x = b[k]
            for j in range(u + v, u, -1):
                out[k, col + j] = alphabet[x % rad]
                x //= rad


@njit(cache=True, nogil=True)
def write_csv_rows(serial_start, code_cols, widths, prefix, out):
    """Rows "serial,code1,code2\\n" into out (bytes); returns bytes written.

    code_cols is a (N, total_width) matrix with every role's code side by side; each
    code is preceded by ``prefix`` (empty, or a URL base for URL forms).
    """
    pos = 0
    ncols = widths.shape[0]
    tmp = np.empty(20, np.uint8)
    for k in range(code_cols.shape[0]):
        s = serial_start + k
        nd = 0
        if s == 0:
            tmp[0] = 48
            nd = 1
        while s > 0:
            tmp[nd] = 48 + s % 10
            s //= 10
            nd += 1
        for j in range(nd - 1, -1, -1):
            out[pos] = tmp[j]
            pos += 1
        c0 = 0
        for c in range(ncols):
            out[pos] = 44  # ','
            pos += 1
            for j in range(prefix.shape[0]):
                out[pos] = prefix[j]
                pos += 1
            for j in range(widths[c]):
                out[pos] = code_cols[k, c0 + j]
                pos += 1
            c0 += widths[c]
        out[pos] = 10
        pos += 1
    return pos


@njit(inline="always")
def _mul128(x, y):
    """Full 64x64 -> 128-bit product as (hi, lo)."""
    m32 = np.uint64(0xFFFFFFFF)
    x0, x1 = x & m32, x >> _U32
    y0, y1 = y & m32, y >> _U32
    p00 = x0 * y0
    p01 = x0 * y1
    p10 = x1 * y0
    p11 = x1 * y1
    mid = (p00 >> _U32) + (p01 & m32) + (p10 & m32)
    lo = (p00 & m32) | (mid << _U32)
    hi = p11 + (p01 >> _U32) + (p10 >> _U32) + (mid >> _U32)
    return hi, lo


@njit(cache=True, nogil=True)
def parse_codes(chars, table, ok, versions, numerals):
    """ASCII rows -> numerals via a 256-entry table (255 = not in the alphabet).

    Column 0 is the key version character. ok[k] is cleared for rows with a bad char.
    """
    n = chars.shape[1]
    for k in range(chars.shape[0]):
        v = table[chars[k, 0]]
        good = v != 255
        versions[k] = v
        for j in range(1, n):
            x = table[chars[k, j]]
            if x == 255:
                good = False
                x = 0
            numerals[k, j - 1] = x
        ok[k] = good


@njit(cache=True, nogil=True)
def halves_to_fields(a, b, v_modulus, v_pow2_bits, tag_bits, serial_bits, batch_bits,
                     ok, roles, batches, serials):
    """P = a * R^v + b; clear ok unless the tag (low tag_bits of P) is zero; split fields."""
    t = np.uint64(tag_bits)
    tmask = (_ONE << t) - _ONE
    smask = (_ONE << np.uint64(serial_bits)) - _ONE
    bmask = (_ONE << np.uint64(batch_bits)) - _ONE
    for k in range(a.shape[0]):
        if v_pow2_bits > 0:
            s = np.uint64(v_pow2_bits)
            hi = a[k] >> (np.uint64(64) - s)
            lo = (a[k] << s) | b[k]
        else:
            hi, lo = _mul128(a[k], v_modulus)
            lo2 = lo + b[k]
            if lo2 < lo:
                hi += _ONE
            lo = lo2
        if (lo & tmask) != 0:
            ok[k] = False
        head = (lo >> t) | (hi << (np.uint64(64) - t))
        serials[k] = head & smask
        head >>= np.uint64(serial_bits)
        batches[k] = head & bmask
        roles[k] = head >> np.uint64(batch_bits)

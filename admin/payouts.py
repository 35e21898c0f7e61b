"""The payout hand-off: payable ledger entries go to the brand's payment system.

Wuma never moves money. Every payable ledger entry (kinds ``grant``, ``unlock`` and
``redeem``; ``entry["payable"]`` is True) is handed to the brand's payment system
(WeChat Pay, a bank, a points platform ... all outside Wuma) in one of two ways:

* **Export** (:meth:`Payouts.export`): a CSV or JSON Lines file of payable entries with
  their payout state, for a payment system that imports files (JSON Lines: values
  verbatim) or for people to open in a spreadsheet (CSV: no cell runs as a formula).
* **Webhook** (:meth:`Payouts.deliver_once`, :meth:`Payouts.run`): an outbox delivered
  at least once to a configured HTTPS endpoint, one entry per request.

A reward is *paid* only when the receiver acknowledges it with a 2xx answer. The ledger
itself is append-only and never changes; delivery state lives beside it.

Delivery state
--------------
``adm_payouts`` (``u64(ledger seq)`` -> record) holds, per payable entry::

    state         pending | paid | rejected | cancelled
    attempts      sends started (counted when an entry is leased, *before* it goes out)
    last_status   HTTP status of the last answer (None: no answer)
    last_error    "HTTP 500 Internal Server Error: <first 200 chars>" or "TimeoutError: ..."
    maybe_delivered  True once any attempt may have reached the payment system without a
                  definite refusal (see "Reversal" below); a record written before this
                  field existed reads as unknown and is decided conservatively (shown
                  True while a request is in flight)
    next_at       unix time before which it is not sent again (backoff)
    leased_until  a deliverer is sending it until then (see below)
    paid_at, cancelled_at, amount, unit
    idempotency_key  the key every copy of the entry is sent with, fixed when the entry
                  is taken in (see "Idempotency keys" below); a record taken in by an
                  earlier release has none and is sent as ``wuma-<seq>``, as it was then

``adm_payouts_pending`` lists the seqs still to deliver (the outbox, in seq order), and
``adm_payouts_meta`` holds the intake cursor: the last ledger seq already looked at. A
pass takes in only ledger entries after the cursor, so it never rescans the ledger. It
also holds ``plain_keys_through``, the ledger's last seq when this release first opened
the store (see "Idempotency keys").

A pass (:meth:`Payouts.deliver_once`):

1. *Intake*: new payable ledger entries after the cursor become ``pending`` records.
2. *Lease*, in one write transaction: up to 10 due entries (pending, ``next_at`` and
   ``leased_until`` passed), oldest seq first, get ``leased_until`` and ``attempts + 1``.
   LMDB admits one writer at a time across processes, so two deliverers never lease the
   same entry. The lease lasts ``30 + n * (timeout + 5)`` seconds for ``n`` entries;
   ``timeout`` is a deadline per request: nothing of a request is sent after it and no
   answer is read past it (a receiver trickling its answer is cut off, see :func:`_post`).
   The DNS lookup and the TCP connect cannot be interrupted and may run past the deadline,
   but a connection made after it is closed unused. A request is only started while its
   lease has ``timeout + 5`` seconds left (else the rest of the chunk is released and
   leased afresh; if that is so for the first entry of a fresh lease, the pass ends). So
   a lease never runs out under a request that may still send or be answered, and
   running several deliverers at once does not send an entry while another copy of it
   is in flight. The exceptions are a deliverer frozen mid-request for longer than its
   lease (``SIGSTOP``, a suspended VM) and a wall clock stepped forward past the lease:
   then a second copy can go out, which receivers deduplicate anyway (below).
   The lease is on disk before anything is sent (forced in a ``relaxed`` data folder
   too), so an entry that may have been sent is never taken for unsent after a crash
   (nor cancelled).
3. *Send* each leased entry and record the answer in its own write transaction:

   ========================================  ===============================================
   answer                                    outcome
   ========================================  ===============================================
   2xx with its whole body (as framed:       ``paid`` (``paid_at``)
   ``Content-Length``, chunks, or the
   receiver closing) within ``timeout``
   400, 409, 410, 422 ... (any other 4xx)    ``rejected``: left for an operator, who looks at
                                             ``last_error`` and runs :meth:`Payouts.retry`
   401, 403, 404, 408, 429, 3xx, 5xx,        failed: stays ``pending``, retried after a
   timeout, refused or dropped connection,   backoff of 30 s, 1 min, 2 min ... capped at 1 h
   no complete status line and headers,      (or a longer ``Retry-After``, up to 1 h)
   a 2xx whose body is cut short
   ========================================  ===============================================

   The status line decides: a 4xx (or 3xx, 5xx) is taken as answered whatever happens to
   its body afterwards (only its first 4096 bytes are read, for ``last_error``); a 2xx
   counts only once its body has arrived in full, read and discarded within the deadline
   (cut short, the receiver may have paid: failed, ``maybe_delivered``, sent again under
   the same key).

   A failure ends the pass (the receiver is probably down or misconfigured: the rest of
   the outbox waits instead of hammering it); leased entries not yet sent are released.
4. Repeat 2-3 until ``limit`` entries were sent or nothing is due.

NOTE: 401/403/404 are *not* rejections: they mean a wrong secret or URL, which would
otherwise reject every entry of a pass. Redirects are not followed (configure the final
URL): a redirect is a failure like a 5xx.

Reversal (:meth:`Payouts.cancel_in`, ``wuma ledger reverse``) cancels a payout only if
the payment system cannot have it: an entry never sent, or a ``rejected`` one none of
whose attempts *may have been delivered*. An attempt may have been delivered unless it
was definitely refused: a 4xx answer (the receiver says it did not take that request),
or a failure before the request went out (connection refused, DNS, TLS handshake).
Anything else counts: no answer, a timeout, a connection dropped after sending, a
3xx or 5xx, a 2xx whose "paid" was never written (the deliverer died, or ran past its
lease: its lease is still on the record when the next one is taken). Such an entry is
``maybe_delivered``; a later ``409 idempotency key already used`` (the receiver had
paid the first copy and refuses the key) leaves it ``rejected`` but not reversible here:
settle it in the payment system, as for sent entries. A record from before
``maybe_delivered`` existed counts as maybe delivered when rejected after more than one
attempt (one attempt, rejected, was answered with a 4xx: definitely refused).

Guarantees: at least once. An entry is sent again when its answer was lost, timed out,
or when the deliverer died between the receiver's 2xx and the local "paid" write (its
lease expires, another pass sends it again: ``kill -9`` right after the receiver's 2xx
is tested, tests/test_crash_writes.py). Every copy carries the same idempotency key
and the same body bytes, so **receivers must deduplicate on the idempotency key** and
answer a duplicate with 2xx. A receiver should remember a key only once it accepted the
entry: :meth:`Payouts.retry` re-sends a rejected entry under the same key.

Idempotency keys
----------------
An entry taken in gets the key ``wuma-<seq>-<digest>``: ``<digest>`` is the first 16 hex
digits of the SHA-256 of its body (below) without the ``idempotency_key`` field. The key is
kept on its record, so every copy of the entry, retries and :meth:`Payouts.retry` included,
carries it, whatever a later release sends. Records taken in by an earlier release keep the
key it sent them with, ``wuma-<seq>``, so a payment system recognises their retries.

Entries an earlier release wrote but its outbox had not taken in yet are keyed ``wuma-<seq>``
too, as that release sends them: the first time this release opens a store, before it can
append to the ledger, it records the ledger's last seq then (0 in a new folder;
:attr:`admin.ledger.Ledger.plain_keys_through`, written by the :class:`~admin.ledger.Ledger`
constructor that every appender passes, in one write transaction, so processes opening the
store at once record the same seq). Entries at or below it get ``wuma-<seq>``, later ones
``wuma-<seq>-<digest>``. A backup taken by an earlier release carries no record: restored,
its first open records the backup's last seq, so the entries it holds untaken keep the key
the original folder sent (or sends) them with and are paid once, while new entries that
take again seqs the original used after the backup get digest keys. A backup taken after
the upgrade carries the record.

NOTE: the key names the entry, not only its ledger seq. Restored from a backup (``wuma
backup``, or any copy of ``db/``), the ledger hands out again the seqs of the entries the
original folder wrote (and may have paid) after the backup: keyed ``wuma-<seq>``, the
restored folder's new payouts reached a payment system that honours keys as ones already
done, answered 2xx without being paid, and were marked paid. A new entry under a reused
seq differs from the original's entry (its time, to the microsecond, at least), so its key
differs. An entry that was in the backup is the same in both folders, so both send it
under one key and it is paid once: one the backup held pending, and one not yet taken in
then (the original may have taken it in and paid it after the backup; a key naming the
folder's copy instead of the entry would have sent it again under another key).

Wire format (what a receiver implements)
----------------------------------------
One ``POST`` to the configured URL per entry::

    Content-Type: application/json
    Idempotency-Key: wuma-<ledger seq>-<digest>   (or wuma-<ledger seq>: see "Idempotency keys")
    X-Wuma-Timestamp: <unix seconds when this copy was sent>
    X-Wuma-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body bytes)>

    {"amount": 188, "at": 1796000000.5, "beneficiary": {"id": "o7Xk...", "role": "consumer"},
     "campaign": 3, "idempotency_key": "wuma-42-e4cf8b2513a240f1", "kind": "grant", "pool": "summer",
     "ref": null, "scan": 1234, "seq": 42, "settle_with": null, "unit": "cash"}

The body is compact UTF-8 JSON with sorted keys. ``amount`` is a whole number in
``unit``: fen for ``cash`` (100 = 1 yuan) or ``points``. ``settle_with`` names who
settles a ``redeem`` with the store (its distributor). Verify before anything else::

    expected = "sha256=" + hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(expected, request.headers["X-Wuma-Signature"]) \\
         and abs(time.time() - int(ts)) < 300         # ts = the X-Wuma-Timestamp header

Each copy is signed afresh (a retry has a new timestamp; the body is unchanged), so a
receiver may reject stale timestamps to stop replays.

APPSEC: the secret is a parameter of each call, never stored in LMDB, never logged and
never part of an error message (a receiver's answer that echoes it is redacted from
``last_error``). The caller reads it from ``WUMA_PAYOUT_SECRET`` or a file.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import secrets
import socket
import ssl
import threading
import time
from urllib.parse import urlsplit

from admin._util import check_after, is_seq
from admin.audit import AuditLog
from admin.ledger import Ledger
from engine.errors import Conflict, NotFound
from engine.files import SpreadsheetWriter, private_output
from engine.ids import check_limit, is_digits
from engine.store import Store, pack, u64, unpack

__all__ = ["Payouts", "STATES", "EXPORT_FIELDS"]

log = logging.getLogger("wuma.payouts")

#: Payout states of a payable ledger entry.
STATES = ("pending", "paid", "rejected", "cancelled")
#: Columns of a CSV export (a JSON Lines export has the webhook body plus the state fields).
EXPORT_FIELDS = ("seq", "at", "kind", "amount", "unit", "beneficiary_role", "beneficiary_id",
                 "campaign", "pool", "scan", "ref", "settle_with", "idempotency_key", "state",
                 "attempts", "paid_at")

_BACKOFF_FIRST = 30.0
_BACKOFF_MAX = 3600.0
#: Entries leased per write transaction (a crashed deliverer holds at most this many).
_CHUNK = 10
#: Ledger entries taken in per pass (bounds the intake transaction).
_INTAKE_PAGE = 5000
#: ``last_error`` keeps at most twice this many characters of an error and its answer.
_SNIPPET = 200
#: A ``last_error`` cut short ending in this many characters or more of the secret's start
#: loses them (fewer say nothing of a secret of 16 bytes or more).
_SECRET_TAIL = 4
#: A lease covers the chunk's requests (``timeout`` each) plus this much per entry to
#: record its answer, plus ``_LEASE_SLACK`` for the lease and the pass around them.
_RECORD_TIME = 5.0
_LEASE_SLACK = 30.0
_MIN_SECRET = 16
#: 4xx answers that are retried: a wrong secret/URL (every entry would fail) or "later".
_RETRIED_4XX = frozenset({401, 403, 404, 408, 429})
_WIRE_FIELDS = ("seq", "at", "kind", "amount", "unit", "beneficiary", "campaign", "pool", "scan",
                "ref", "settle_with")


def _backoff(attempts: int) -> float:
    """30 s after the first failure, doubling, capped at one hour."""
    return min(_BACKOFF_MAX, _BACKOFF_FIRST * 2.0 ** min(max(attempts - 1, 0), 20))


def _check_target(url, secret) -> tuple[str, bytes]:
    # APPSEC: no message here repeats the secret, nor the URL (it may carry a token).
    if not isinstance(url, str):
        raise TypeError("the payout webhook URL must be a string")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("the payout webhook URL must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the payout webhook URL must not carry a user or password;"
                         " requests are authenticated by their signature")
    try:
        parts.port
    except ValueError:
        raise ValueError("the payout webhook URL has an invalid port") from None
    if isinstance(secret, str):
        key = secret.encode()
    elif isinstance(secret, bytes):
        key = secret
    else:
        raise TypeError("the payout webhook secret must be a string or bytes")
    if len(key) < _MIN_SECRET:
        raise ValueError(f"the payout webhook secret must be at least {_MIN_SECRET} characters"
                         " (e.g. `openssl rand -hex 32`)")
    return url, key


def _signature(key: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _fields(entry: dict) -> dict:
    return {f: entry.get(f) for f in _WIRE_FIELDS}


def _wire(entry: dict, key: str) -> dict:
    out = _fields(entry)
    out["idempotency_key"] = key
    return out


def _json(fields: dict) -> bytes:
    # NOTE: deterministic bytes (sorted keys, compact): every copy of an entry is identical.
    return json.dumps(fields, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def _body(entry: dict, key: str) -> bytes:
    return _json(_wire(entry, key))


def _new_key(entry: dict) -> str:
    """The idempotency key of an entry taken in now (see "Idempotency keys")."""
    digest = hashlib.sha256(_json(_fields(entry))).hexdigest()
    return f"wuma-{entry['seq']}-{digest[:16]}"


def _key(seq: int, rec: dict) -> str:
    """The key every copy of an entry is sent with: its record's, or, on a record taken in
    by an earlier release, the one that release sent."""
    return rec.get("idempotency_key") or f"wuma-{seq}"


def _new_record(entry: dict, plain_through: int) -> dict:
    """The record of an entry taken in now; ``plain_through``: the last seq an earlier
    release wrote (:attr:`admin.ledger.Ledger.plain_keys_through`), whose entries keep
    the key it sends, ``wuma-<seq>``."""
    key = _key(entry["seq"], {}) if entry["seq"] <= plain_through else _new_key(entry)
    return {"state": "pending", "attempts": 0, "last_status": None, "last_error": None,
            "next_at": 0.0, "leased_until": 0.0, "lease": None, "paid_at": None,
            "cancelled_at": None, "amount": entry["amount"], "unit": entry["unit"],
            "maybe_delivered": False, "idempotency_key": key}


def _maybe_delivered(rec: dict) -> bool:
    """Whether an attempt of ``rec`` may have reached the payment system without a
    definite refusal (see "Reversal" in the module docstring)."""
    if rec.get("lease") is not None:
        return True  # an attempt in flight, or one whose answer was never recorded
    known = rec.get("maybe_delivered")
    if known is not None:
        return known
    # NOTE: a record from before the field: unknown. Conservative: any attempt may have
    # been delivered, except the single attempt of a rejected entry (answered with a 4xx).
    return rec["attempts"] > (1 if rec["state"] == "rejected" else 0)


def _public(seq: int, rec: dict) -> dict:
    return {"seq": seq, **{k: v for k, v in rec.items() if k != "lease"},
            "maybe_delivered": _maybe_delivered(rec), "idempotency_key": _key(seq, rec)}


def _clean(text: str, key: bytes) -> str:
    """A short, printable, secret-free error text for ``last_error``.

    APPSEC: the secret is taken out of the whole text before it is cut short, and a cut
    that ends inside it loses what it kept of it: cut first, a secret echoed across the
    cut was kept but for its last characters (the error is shown to viewers, logged and
    audited)."""
    secret = key.decode(errors="replace")
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    if secret:
        text = text.replace(secret, "[redacted]")
    text = text[:2 * _SNIPPET]
    if secret:
        for n in range(min(len(secret), len(text)), _SECRET_TAIL - 1, -1):
            if text.endswith(secret[:n]):
                return text[:-n] + "[redacted]"
    return text


class _Answer:
    __slots__ = ("status", "error", "retry_after", "sent")

    def __init__(self, status: int | None, error: str | None, retry_after: float | None = None,
                 *, sent: bool = True):
        self.status, self.error, self.retry_after = status, error, retry_after
        self.sent = sent  # False: failed before any byte of the request went out

    @property
    def maybe_delivered(self) -> bool:
        """The request may have reached the payment system: not a definite refusal (a 4xx,
        or a failure before sending)."""
        return self.sent and not (self.status is not None and 400 <= self.status < 500)

    @property
    def outcome(self) -> str:
        if self.status is not None and 200 <= self.status < 300:
            return "paid"
        if self.status is not None and 400 <= self.status < 500 and self.status not in _RETRIED_4XX:
            return "rejected"
        return "failed"


def _body_head(r: http.client.HTTPResponse) -> bytes:
    """Up to the first 4096 bytes of a non-2xx answer's body, whatever arrived of them
    (for ``last_error`` only: the status line alone decides such an answer)."""
    try:
        return r.read(4096)
    except http.client.IncompleteRead as e:
        return e.partial[:4096]
    except (OSError, http.client.HTTPException, ValueError):
        return b""


def _drain(r: http.client.HTTPResponse, expired: threading.Event) -> None:
    """Read and discard a 2xx answer's body to its end as framed; raise if it was cut
    short. Time is bounded by the deadline (the timer shuts the socket down), memory by
    the chunk size."""
    close_delimited = r.length is None and not r.chunked
    while r.read(65536):  # a chunked body cut short raises IncompleteRead here
        pass
    if r.length:  # Content-Length: read() returns b"" early, without an error
        raise http.client.IncompleteRead(b"", r.length)
    if close_delimited and expired.is_set():
        # NOTE: the end of a body delimited by the connection closing looks the same as
        # the timer shutting the socket down: past the deadline, it counts as cut short.
        raise TimeoutError("the deadline passed while reading the answer")


def _post(url: str, key: bytes, timestamp: str, body: bytes, idem: str, timeout: float) -> _Answer:
    """One signed POST (standard library only). Never raises for network trouble.

    ``timeout`` is a deadline for the request: nothing of it is sent after the deadline,
    and no answer is read past it. A timer shuts the socket down at the deadline (a socket
    timeout alone bounds each read, not the request: an answer trickling a byte every few
    seconds would keep it alive past its lease, and another deliverer would send the entry
    again meanwhile). The timer cannot interrupt the DNS lookup or a TCP connect in
    progress (the socket does not exist yet): those may run longer (the resolver's own
    limits, ``timeout`` per address tried), but a connection made after the deadline is
    closed unused, so no copy of the entry goes out late.

    How an answer is decided, by its status line (status and headers read in full):

    * a 2xx counts only if its body arrived in full, as framed (all ``Content-Length``
      bytes, the last chunk, or the receiver closing the connection before the deadline);
      the body is read and discarded to its end within the deadline. Cut short, it is a
      failure that may have been delivered: sent again under the same key.
    * any other status is decided by the status line alone, whatever happens to its body:
      a 4xx is a definite refusal (never ``maybe_delivered``), a 3xx or 5xx a failure.
      Only the first 4096 bytes of the body are read, for ``last_error``.
    * no complete status line and headers by the deadline: a failure, maybe delivered."""
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # PERF: one connection per request keeps failure handling simple (a dropped
    # keep-alive connection cannot be confused with a lost answer); reuse if TLS
    # handshakes ever dominate.
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = {"Content-Type": "application/json", "Idempotency-Key": idem,
               "X-Wuma-Timestamp": timestamp, "X-Wuma-Signature": _signature(key, timestamp, body),
               "User-Agent": "wuma-payouts/1"}
    guard = threading.Lock()
    expired, done = threading.Event(), threading.Event()
    sock: list = []  # the connected socket (conn.sock is None once a closing answer began)

    def abort() -> None:
        with guard:  # NOTE: never after close: the descriptor may belong to another socket
            if done.is_set():
                return
            expired.set()
            # While connecting: the plain TCP socket once it is connected (TLS handshake);
            # none yet during DNS or the TCP connect, which the timer cannot interrupt.
            s = sock[0] if sock else conn.sock
            if s is not None:
                try:  # the plain socket's shutdown (an SSLSocket's would drop its SSL object)
                    socket.socket.shutdown(s, socket.SHUT_RDWR)
                except OSError:
                    pass

    timer = threading.Timer(timeout, abort)
    timer.daemon = True
    timer.start()
    sent = False
    try:
        conn.connect()  # nothing of the request has gone out before this returns
        with guard:
            sock.append(conn.sock)
        if expired.is_set():  # DNS or the connect ran past the deadline: send nothing
            raise TimeoutError("the deadline passed while connecting")
        sent = True  # NOTE: from here on, the receiver may have it (however this ends)
        conn.request("POST", path, body=body, headers=headers)
        r = conn.getresponse()  # the status line and headers: the receiver's verdict
        if 200 <= r.status < 300:
            _drain(r, expired)
            snippet = ""
        else:
            snippet = _body_head(r).decode("utf-8", errors="replace")  # NOTE: cut by _clean
    except (OSError, http.client.HTTPException) as e:
        # TimeoutError, ConnectionRefusedError, RemoteDisconnected, IncompleteRead (a 2xx
        # cut short), ssl.SSLError ...
        if expired.is_set():
            error = f"TimeoutError: no complete answer within {timeout:g} s"
        else:
            error = f"{type(e).__name__}: {e}"
        return _Answer(None, _clean(error, key), sent=sent)
    finally:
        timer.cancel()
        with guard:
            done.set()
        conn.close()
    retry_after = None
    if r.status in (429, 503) and is_digits((r.getheader("Retry-After") or "").strip()):
        retry_after = float(r.getheader("Retry-After").strip())
    if 200 <= r.status < 300:
        return _Answer(r.status, None)
    error = f"HTTP {r.status} {r.reason}" + (f": {snippet}" if snippet.strip() else "")
    if 300 <= r.status < 400:
        error += " (redirects are not followed; configure the final URL)"
    return _Answer(r.status, _clean(error, key), retry_after)


class Payouts:
    """The outbox of payable ledger entries and their delivery to the payment system."""

    def __init__(self, store: Store, ledger: Ledger, audit: AuditLog) -> None:
        self._store = store
        self._ledger = ledger
        self._audit = audit
        self._db = store.db("adm_payouts")
        # u64(seq) -> b"": entries still to deliver (pending), in seq order
        self._pending = store.db("adm_payouts_pending")
        # b"intake" -> u64(last ledger seq taken in)
        self._meta = store.db("adm_payouts_meta")

    # -- reading ---------------------------------------------------------------------
    def _cursor(self, txn) -> int:
        raw = txn.get(b"intake", db=self._meta)
        return 0 if raw is None else int.from_bytes(raw, "big")

    def _record_in(self, txn, seq: int) -> dict | None:
        """The payout record of a payable entry (a fresh pending one if not taken in yet)."""
        if not is_seq(seq):
            raise NotFound(f"no ledger entry {seq}")
        raw = txn.get(u64(seq), db=self._db)
        if raw is not None:
            return unpack(raw)
        entry = self._ledger.get_in(txn, seq)
        if entry is None:
            raise NotFound(f"no ledger entry {seq}")
        if not entry.get("payable"):
            return None
        return _new_record(entry, self._ledger.plain_keys_through)

    def state(self, seq: int) -> dict:
        """The payout state of ledger entry ``seq``: state, attempts, last_error, next_at ..."""
        with self._store.read() as txn:
            rec = self._record_in(txn, seq)
        if rec is None:
            raise NotFound(f"ledger entry {seq} is not payable (only grant, unlock and redeem are)")
        return _public(seq, rec)

    def summary(self) -> dict:
        """Count and amounts (per unit) of payable entries in each state."""
        out = {s: {"count": 0, "amount": {}} for s in STATES}

        def add(state: str, amount: int, unit: str) -> None:
            out[state]["count"] += 1
            out[state]["amount"][unit] = out[state]["amount"].get(unit, 0) + amount

        with self._store.read() as txn:
            cursor = self._cursor(txn)
            seen = set()
            for k, raw in txn.cursor(db=self._db):
                rec = unpack(raw)
                add(rec["state"], rec["amount"], rec["unit"])
                if int.from_bytes(k, "big") > cursor:
                    seen.add(int.from_bytes(k, "big"))  # cancelled before intake
        # Not taken in yet: pending (one page at a time, like the intake).
        after = cursor
        while True:
            page = self._ledger.entries(after, _INTAKE_PAGE)
            for e in page:
                if e.get("payable") and e["seq"] not in seen:
                    add("pending", e["amount"], e["unit"])
            if len(page) < _INTAKE_PAGE:
                return out
            after = page[-1]["seq"]

    def export(self, path, fmt: str = "csv", *, after: int = 0, state: str | None = None) -> int:
        """Write payable entries with seq > ``after`` (optionally only those in ``state``)
        to ``path`` as ``csv`` or ``jsonl``; returns how many. The file appears whole or
        not at all, readable by its owner only (see engine.files.private_output).

        ``jsonl``: one JSON object a line, the webhook body plus ``state``, ``attempts``
        and ``paid_at``, every value verbatim: what a payment system should import.

        ``csv``: the columns :data:`EXPORT_FIELDS`, a header line, CRLF line ends, UTF-8
        with a byte-order mark, for people opening it in Excel, WPS or LibreOffice (Excel
        reads a UTF-8 file without the mark in the system's code page: on a Chinese
        Windows, GBK, and ``张三`` comes out as ``寮犱笁``). A consumer's id is whatever
        the brand's front end sent with the scan, so a text cell that starts with ``=``,
        ``+``, ``-``, ``@``, a tab or a carriage return (or with ``'``) is written with a
        ``'`` in front, and shown as text instead of run as a formula (CSV injection,
        see engine.files.spreadsheet_cell). Numbers (``amount``, ``seq`` ...) are written
        as numbers. To get an id back exactly, drop the first ``'`` of a cell that starts
        with one."""
        _check_export(fmt, after, state)  # NOTE: before the file is made
        # NOTE: mode 0600: the file names beneficiaries and amounts.
        with private_output(path, "w", encoding="utf-8-sig" if fmt == "csv" else "utf-8",
                            newline="") as f:
            return self._write_export(f, fmt, after, state)

    def write_export(self, f, fmt: str = "csv", *, after: int = 0, state: str | None = None) -> int:
        """:meth:`export` to the open text file ``f`` (opened with ``newline=""``: standard
        output, a pipe); returns how many. No byte-order mark: a pipe goes to a program."""
        _check_export(fmt, after, state)
        return self._write_export(f, fmt, after, state)

    def _write_export(self, f, fmt: str, after: int, state: str | None) -> int:
        count = 0
        writer = None
        if fmt == "csv":
            # APPSEC: a consumer's id comes from the public scan API as any text
            # (=HYPERLINK(...), or a bare CR that would start a forged row): the
            # writer escapes such cells; the JSON Lines export stays verbatim.
            writer = SpreadsheetWriter(f, EXPORT_FIELDS)
            writer.writeheader()
        for row in self._export_rows(after, state):
            if writer is not None:
                b = row.pop("beneficiary") or {}
                row.update(beneficiary_role=b.get("role"), beneficiary_id=b.get("id"))
                writer.writerow({k: row[k] for k in EXPORT_FIELDS})
            else:
                f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            count += 1
        return count

    def _export_rows(self, after: int, state: str | None):
        while True:
            page = self._ledger.entries(after, _INTAKE_PAGE)
            payable = [e for e in page if e.get("payable")]
            with self._store.read() as txn:
                recs = [self._record_in(txn, e["seq"]) for e in payable]
            for e, rec in zip(payable, recs):
                if state is None or rec["state"] == state:
                    yield {**_wire(e, _key(e["seq"], rec)), "state": rec["state"],
                           "attempts": rec["attempts"], "paid_at": rec["paid_at"]}
            if len(page) < _INTAKE_PAGE:
                return
            after = page[-1]["seq"]

    # -- changes -------------------------------------------------------------------------
    def cancel_in(self, txn, seq: int, *, now: float | None = None) -> dict:
        """Cancel the payout of ``seq`` inside the caller's write transaction (a ledger
        reversal). Only an entry never sent, or one the payment system refused (``rejected``)
        with no attempt that may have been delivered (see "Reversal" in the module
        docstring), can be cancelled: once a copy may have reached the payment system
        otherwise, only the payment system can stop it."""
        rec = self._record_in(txn, seq)
        if rec is None:
            raise ValueError(f"ledger entry {seq} is not payable; there is no payout to cancel")
        if rec["state"] == "cancelled":
            raise Conflict(f"the payout of ledger entry {seq} is already cancelled")
        if rec["state"] != "rejected" and (rec["state"] != "pending" or rec["attempts"] > 0):
            raise Conflict(f"the payout of ledger entry {seq} was already sent to the payment"
                           f" system ({rec['state']}, {rec['attempts']} attempt(s)); only the"
                           " payment system can stop it now")
        if rec["state"] == "rejected" and _maybe_delivered(rec):
            raise Conflict(f"the payout of ledger entry {seq} was rejected by the payment system"
                           f" (last answer: {rec['last_status']}), but an earlier attempt may have"
                           f" reached it ({rec['attempts']} attempt(s), not all refused) and may"
                           " have been paid: settle it in the payment system")
        rec.update(state="cancelled", cancelled_at=time.time() if now is None else now)
        txn.put(u64(seq), pack(rec), db=self._db)
        txn.delete(u64(seq), db=self._pending)
        return _public(seq, rec)

    def retry(self, seq: int, *, who: str, now: float | None = None) -> dict:
        """Put a rejected payout back in the outbox (sent on the next pass, same key)."""
        now = time.time() if now is None else now
        with self._store.write() as txn:
            rec = self._record_in(txn, seq)
            if rec is None:
                raise ValueError(f"ledger entry {seq} is not payable; there is no payout to retry")
            if rec["state"] != "rejected":
                raise Conflict(f"only a rejected payout can be retried; ledger entry {seq} is"
                               f" {rec['state']}")
            self._audit.append(txn, who, "payout.retry", str(seq),
                               {"attempts": rec["attempts"], "last_status": rec["last_status"],
                                "last_error": rec["last_error"]}, now=now)
            # NOTE: decided (a record from before the field) while its state still says how
            rec.update(state="pending", next_at=now, leased_until=0.0, lease=None,
                       maybe_delivered=_maybe_delivered(rec))
            txn.put(u64(seq), pack(rec), db=self._db)
            txn.put(u64(seq), b"", db=self._pending)
        return _public(seq, rec)

    # -- delivery ------------------------------------------------------------------------
    def _intake(self) -> int:
        """Turn payable ledger entries after the cursor into pending records."""
        with self._store.read() as txn:
            cursor = self._cursor(txn)
        page = self._ledger.entries(cursor, _INTAKE_PAGE)
        if not page:
            return 0
        # NOTE: ledger seqs are allocated and committed inside one write transaction and
        # LMDB has one writer at a time, so entries become visible in seq order: nothing
        # at or below the last seq read can still appear later, and the cursor is safe.
        n = 0
        with self._store.write() as txn:
            if self._cursor(txn) >= page[-1]["seq"]:
                return 0  # another deliverer took these in meanwhile
            plain = self._ledger.plain_keys_through
            for e in page:
                if e.get("payable") and e["seq"] > cursor:
                    # overwrite=False: a record written meanwhile (cancelled) stays.
                    if txn.put(u64(e["seq"]), pack(_new_record(e, plain)), db=self._db, overwrite=False):
                        txn.put(u64(e["seq"]), b"", db=self._pending)
                        n += 1
            txn.put(b"intake", u64(page[-1]["seq"]), db=self._meta)
        return n

    def _reversed(self, txn, seq: int) -> bool:
        by = self._ledger.referred_by(txn, seq)
        if by is None:
            return False
        e = self._ledger.get_in(txn, by)
        return e is not None and e["kind"] == "reversal"

    def _lease(self, n: int, now: float, lease_for: float, token: str, stats: dict) -> list:
        """Lease up to ``n`` due entries, oldest first; returns [(seq, body, key)]."""
        out: list = []
        with self._store.read() as txn:  # PERF: no write transaction when nothing is due
            if not self._any_due(txn, now):
                return out
        with self._store.write() as txn:
            cancelled = []
            for k in txn.cursor(db=self._pending).iternext(keys=True, values=False):
                if len(out) >= n:
                    break
                rec = unpack(txn.get(k, db=self._db))
                if rec["next_at"] > now or rec["leased_until"] > now:
                    continue
                seq = int.from_bytes(k, "big")
                if rec["attempts"] == 0 and self._reversed(txn, seq):
                    # NOTE: a reversal should have called cancel_in; never send it anyway.
                    rec.update(state="cancelled", cancelled_at=now)
                    txn.put(k, pack(rec), db=self._db)
                    cancelled.append(k)
                    continue
                # A lease still on the record: that attempt's answer was never recorded
                # (the deliverer died, or ran past its lease). It may have been delivered.
                rec.update(maybe_delivered=_maybe_delivered(rec), attempts=rec["attempts"] + 1,
                           leased_until=now + lease_for, lease=token)
                txn.put(k, pack(rec), db=self._db)
                key = _key(seq, rec)
                out.append((seq, _body(self._ledger.get_in(txn, seq), key), key))
            for k in cancelled:
                txn.delete(k, db=self._pending)
            stats["cancelled"] += len(cancelled)
        if out:
            # NOTE: the lease (attempts + 1) is on disk before a request goes out, whatever
            # the durability: with "relaxed" a power loss could undo it, and an entry the
            # payment system has would look never sent, so a reversal could cancel it
            self._store.sync()
        return out

    # PERF: passes walk the outbox from its oldest entry, skipping those in backoff or
    # leased; that is at most the entries that failed within the last hour (a pass stops
    # at its first failure), so the walk stays short even with a large backlog.
    def _any_due(self, txn, now: float) -> bool:
        for k in txn.cursor(db=self._pending).iternext(keys=True, values=False):
            rec = unpack(txn.get(k, db=self._db))
            if rec["next_at"] <= now and rec["leased_until"] <= now:
                return True
        return False

    def _finish(self, seq: int, token: str, answer: _Answer, now: float) -> None:
        with self._store.write() as txn:
            rec = unpack(txn.get(u64(seq), db=self._db))
            if answer.outcome == "paid":
                # The receiver has it, whoever holds the lease now: paid it is.
                if rec["state"] == "cancelled":
                    log.error("payout %d was paid after it was cancelled (its ledger entry is "
                              "reversed and its budget returned): settle it with the payment "
                              "system", seq)
                if rec["state"] != "paid":
                    rec.update(state="paid", paid_at=now, last_status=answer.status,
                               last_error=None, leased_until=0.0, lease=None)
                    txn.put(u64(seq), pack(rec), db=self._db)
                    txn.delete(u64(seq), db=self._pending)
                return
            if answer.maybe_delivered and not rec.get("maybe_delivered"):
                # Whoever owns the entry now: a copy may be with the payment system.
                rec["maybe_delivered"] = True
                if rec["state"] == "cancelled":
                    log.error("payout %d may have been delivered after it was cancelled (its "
                              "ledger entry is reversed and its budget returned): check it with "
                              "the payment system", seq)
                txn.put(u64(seq), pack(rec), db=self._db)
            if rec["lease"] != token or rec["state"] != "pending":
                return  # our lease ran out and another deliverer owns the entry now
            rec.update(last_status=answer.status, last_error=answer.error, leased_until=0.0,
                       lease=None)
            if answer.outcome == "rejected":
                rec.update(state="rejected", next_at=0.0)
                txn.delete(u64(seq), db=self._pending)
            else:
                wait = _backoff(rec["attempts"])
                if answer.retry_after:
                    wait = max(wait, min(answer.retry_after, _BACKOFF_MAX))
                rec["next_at"] = now + wait
            txn.put(u64(seq), pack(rec), db=self._db)

    def _release(self, seqs: list[int], token: str) -> None:
        """Give back leased entries that were not sent (their attempt did not happen)."""
        with self._store.write() as txn:
            for seq in seqs:
                rec = unpack(txn.get(u64(seq), db=self._db))
                if rec["lease"] == token and rec["state"] == "pending":
                    rec.update(attempts=rec["attempts"] - 1, leased_until=0.0, lease=None)
                    txn.put(u64(seq), pack(rec), db=self._db)

    def deliver_once(self, url: str, secret: str | bytes, *, limit: int = 100,
                     now: float | None = None, timeout: float = 5) -> dict:
        """One delivery pass: take in new payable entries, then send up to ``limit`` due
        entries, oldest first, one signed POST each, ``timeout`` seconds its deadline
        (see :func:`_post`: no complete answer by then is a failure; DNS and the TCP
        connect cannot be cut short, but nothing is sent after it). Stops at the first
        failure.

        Returns counts: ``taken_in``, ``sent`` (requests made), ``paid``, ``failed``,
        ``rejected``, ``cancelled`` (reversed entries found unsent)."""
        url, key = _check_target(url, secret)
        check_limit(limit)
        if not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        clock = time.time if now is None else (lambda: now)
        stats = {"taken_in": self._intake(), "sent": 0, "paid": 0, "failed": 0, "rejected": 0,
                 "cancelled": 0}
        token = secrets.token_hex(8)
        while stats["sent"] < limit:
            n = min(_CHUNK, limit - stats["sent"])
            # The lease covers sending the whole chunk, with room to spare.
            lease_for = _LEASE_SLACK + n * (timeout + _RECORD_TIME)
            # NOTE: the lease's end in real time (monotonic), also when ``now`` is injected.
            lease_end = time.monotonic() + lease_for
            batch = self._lease(n, clock(), lease_for, token, stats)
            if not batch:
                break
            short = False
            for i, (seq, body, key_sent) in enumerate(batch):
                if lease_end - time.monotonic() < timeout + _RECORD_TIME:
                    # Slow writes ate the lease: a request now could outlive it, and
                    # another deliverer send the entry meanwhile. Lease the rest afresh
                    # (or, if even the lease itself was that slow, end the pass).
                    self._release([s for s, *_ in batch[i:]], token)
                    if i == 0:
                        return stats
                    short = True
                    break
                answer = _post(url, key, str(int(clock())), body, key_sent, timeout)
                stats["sent"] += 1
                self._finish(seq, token, answer, clock())
                stats[answer.outcome] += 1
                if answer.outcome == "failed":
                    log.warning("payout %d not delivered: %s", seq, answer.error)
                    self._release([s for s, *_ in batch[i + 1:]], token)
                    return stats
                if answer.outcome == "rejected":
                    log.warning("payout %d rejected by the payment system: %s", seq, answer.error)
            if len(batch) < n and not short:
                break
        return stats

    def run(self, url: str, secret: str | bytes, stop: threading.Event, interval: float = 1.0,
            *, limit: int = 100, timeout: float = 5) -> None:
        """Deliver until ``stop`` is set: a pass every ``interval`` seconds, at once again
        while there is more to send, and less often (up to a minute) while it fails."""
        _check_target(url, secret)
        wait = interval
        while not stop.is_set():
            try:
                r = self.deliver_once(url, secret, limit=limit, timeout=timeout)
            except Exception:  # e.g. a full disk: keep the deliverer alive, say so
                log.exception("payout delivery pass failed")
                r = {"sent": 0, "paid": 0, "failed": 1}
            if r["failed"] and not r["paid"]:
                wait = min(max(wait, interval) * 2, 60.0)
            elif r["sent"] >= limit:
                wait = 0.0
            else:
                wait = interval
            stop.wait(wait)


def _check_export(fmt: str, after: int, state: str | None) -> None:
    """ValueError for an export's arguments (before any file is made)."""
    if fmt not in ("csv", "jsonl"):
        raise ValueError("export format must be csv or jsonl")
    if state is not None and state not in STATES:
        raise ValueError(f"payout state must be one of {', '.join(STATES)}")
    check_after(after)

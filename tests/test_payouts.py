"""Payout hand-off: export files and webhook delivery to a real local HTTP receiver.

The receiver is a real ``ThreadingHTTPServer`` on 127.0.0.1 that verifies signatures
the way the module docstring tells receivers to (its own code, not the sender's),
deduplicates on the idempotency key, and can be told to fail its next requests. Time is
injected (``now=``), so backoff is checked without sleeping.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from admin.audit import AuditLog
from admin.ledger import Ledger
from admin.payouts import EXPORT_FIELDS, STATES, Payouts
from engine.errors import Conflict, NotFound
from engine.store import Store

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-for-tests-" + "x" * 24
T0 = 1_800_000_000.0


class Receiver:
    """A payment system's webhook endpoint. ``plan`` holds what to do with the next
    correctly signed requests: "500", "timeout", "drop", "422", "409", "429", "hang",
    "trickle"; answers whose body is cut short or slow (see ``_partial``): "422 cut",
    "422 trickle", "500 cut", "200 cut", "200 chunked cut", "200 close trickle"; whole
    answers framed otherwise: "200 close", "200 big"; then 200."""

    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret.encode()
        self.plan: list[str] = []
        self.requests: list[dict] = []   # every request: key, body, signature_ok, answer
        self.accepted: dict[str, dict] = {}  # idempotency key -> body (deduplicated)
        self.delay = 0.0
        self.release = threading.Event()  # ends "timeout"/"hang" waits
        self.hanging = threading.Event()  # set when a "hang" request arrived
        self.trickle_every = 0.2  # "trickle": a 200 whose 20-byte body comes a byte at a time
        self.cut_off = threading.Event()  # set when the client hung up on a "trickle"
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                receiver._handle(self)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                pass  # the client hung up on a "timeout": expected

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/wuma/payouts?shop=1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers["Content-Length"]))
        ts = h.headers.get("X-Wuma-Timestamp", "")
        expected = "sha256=" + hmac.new(self.secret, ts.encode() + b"." + body,
                                        hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(expected, h.headers.get("X-Wuma-Signature", ""))
        rec = {"key": h.headers.get("Idempotency-Key"), "ts": ts, "raw": body, "signature_ok": ok,
               "path": h.path, "type": h.headers.get("Content-Type")}
        with self.lock:
            self.requests.append(rec)
            action = self.plan.pop(0) if ok and self.plan else "ok"
        if not ok:
            return self._answer(h, 401, b"bad signature")
        data = json.loads(body)
        rec["body"] = data
        assert data["idempotency_key"] == rec["key"]
        if self.delay:
            time.sleep(self.delay)
        if action == "500":
            return self._answer(h, 500, b"database on fire")
        if action == "422":
            # A chatty error page that even echoes the secret: must not land in last_error whole.
            return self._answer(h, 422, b"unknown beneficiary " + self.secret + b" " + b"x" * 5000)
        if action == "422 across":  # the secret echoed across where the error is cut short
            return self._answer(h, 422, b"unknown beneficiary " + b"-" * 150 + b" " + self.secret + b" end")
        if action == "422 cut":  # an answer that ends inside the secret
            return self._answer(h, 422, b"unknown beneficiary " + self.secret[:20])
        if action == "409":  # a payment system that refuses a key it has already seen
            return self._answer(h, 409, b'{"error": "idempotency key already used"}')
        if action == "429":
            return self._answer(h, 429, b"slow down", {"Retry-After": "600"})
        if action == "429 odd":  # byte 0xB2: "²" to http.client, a digit to str.isdigit()
            return self._answer(h, 429, b"slow down", {"Retry-After": "\u00b2"})
        if action in PARTIAL and PARTIAL[action][0] >= 300:  # refused: nothing recorded
            return self._partial(h, action)
        with self.lock:  # the entry is processed (recorded) before anything else goes wrong
            dup = rec["key"] in self.accepted
            self.accepted.setdefault(rec["key"], data)
        if action in ("timeout", "hang"):
            if action == "hang":
                self.hanging.set()
            self.release.wait(10)
            return self._answer(h, 200, b"{}")
        if action == "trickle":  # processed; each byte of the answer well within a timeout
            try:
                h.send_response(200)
                h.send_header("Content-Length", "20")
                h.end_headers()
                for _ in range(20):
                    h.wfile.write(b"x")
                    h.wfile.flush()
                    time.sleep(self.trickle_every)
            except OSError:
                self.cut_off.set()
            return
        if action in PARTIAL:  # processed; the answer's body is cut short, slow or unusual
            return self._partial(h, action)
        if action == "drop":  # read the body, processed it, then lose the answer
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        return self._answer(h, 200, json.dumps({"ok": True, "duplicate": dup}).encode(),
                            {"Content-Type": "application/json"})

    def _partial(self, h, action: str) -> None:
        """A status line and headers, then a body that ends early (the connection is shut
        down), trickles past any small deadline, or is framed unusually."""
        status, headers, head, rest, end = PARTIAL[action]
        try:
            h.send_response(status)
            for k, v in headers.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(head)
            h.wfile.flush()
            for _ in range(rest):  # a byte at a time
                time.sleep(self.trickle_every)
                h.wfile.write(b"x")
                h.wfile.flush()
            if end == "cut":
                h.close_connection = True
                h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            self.cut_off.set()

    @staticmethod
    def _answer(h, status: int, body: bytes, headers: dict | None = None) -> None:
        try:
            h.send_response(status)
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        except OSError:
            pass

    def keys(self) -> list[str]:
        return [r["key"] for r in self.requests]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


#: Receiver actions with a partial or unusual body: status, headers, the body's first bytes,
#: how many more come a byte at a time (``trickle_every`` apart), and "cut" (the receiver
#: shuts the connection down after them) or "end" (the answer is whole; the handler's
#: HTTP/1.0 connection closes after it).
PARTIAL = {
    "422 cut": (422, {"Content-Length": "5000"}, b"unknown beneficiary " + b"x" * 80, 0, "cut"),
    "422 trickle": (422, {"Content-Length": "120"}, b"unknown beneficiary ", 100, "end"),
    "500 cut": (500, {"Content-Length": "5000"}, b"database on fire " + b"x" * 80, 0, "cut"),
    "200 cut": (200, {"Content-Length": "100"}, b'{"ok": tr', 0, "cut"),
    "200 chunked cut": (200, {"Transfer-Encoding": "chunked"}, b"a\r\n{\"ok\": tru", 0, "cut"),
    "200 close trickle": (200, {}, b'{"ok": ', 20, "end"),  # no length: ends when it closes
    "200 close": (200, {}, b'{"ok": true}', 0, "end"),
    "200 big": (200, {"Content-Length": "100000"}, b" " * 100_000, 0, "end"),
}


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "db")
    yield s
    s.close()


@pytest.fixture
def ledger(store):
    return Ledger(store)


@pytest.fixture
def payouts(store, ledger):
    return Payouts(store, ledger, AuditLog(store))


def add(store, ledger, kind="grant", amount=188, **extra) -> int:
    entry = {"kind": kind, "at": T0, "amount": amount, "unit": "cash",
             "beneficiary": {"role": "consumer", "id": "oUser1"}, "campaign": 3, "pool": "summer",
             "scan": 77, "settle_with": None, **extra}
    with store.write() as txn:
        return ledger.append(txn, entry)


def key_of(ledger, seq: int) -> str:
    """The idempotency key the module docstring documents for an entry taken in by this
    release, computed here: ``wuma-<seq>-`` and the first 16 hex digits of the SHA-256 of
    its body without the key."""
    e = ledger.get(seq)
    fields = {f: e.get(f) for f in ("seq", "at", "kind", "amount", "unit", "beneficiary", "campaign",
                                    "pool", "scan", "ref", "settle_with")}
    body = json.dumps(fields, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
    return f"wuma-{seq}-{hashlib.sha256(body).hexdigest()[:16]}"


def mixed_ledger(store, ledger) -> list[int]:
    """One entry of every kind; returns the payable seqs."""
    g = add(store, ledger, "grant", 100)
    lk = add(store, ledger, "locked", 200)
    u = add(store, ledger, "unlock", 200, ref=lk)
    v = add(store, ledger, "voucher", 500, beneficiary={"role": "consumer", "id": "oUser2"})
    r = add(store, ledger, "redeem", 500, ref=v, scan=None,
            beneficiary={"role": "store", "id": "S-001"}, settle_with="D-7")
    add(store, ledger, "expire", 50, ref=add(store, ledger, "locked", 50))
    p = add(store, ledger, "grant", 30, unit="points")
    return [g, u, r, p]


# -- delivery ------------------------------------------------------------------------------

def test_delivers_payable_entries_in_seq_order_signed_and_marks_them_paid(store, ledger, payouts,
                                                                         receiver):
    payable = mixed_ledger(store, ledger)
    assert payouts.summary()["pending"]["count"] == 4  # before any pass: all pending

    r = payouts.deliver_once(receiver.url, SECRET, now=T0)

    assert r == {"taken_in": 4, "sent": 4, "paid": 4, "failed": 0, "rejected": 0, "cancelled": 0}
    assert receiver.keys() == [key_of(ledger, s) for s in payable]
    assert all(q["signature_ok"] and q["ts"] == str(int(T0)) for q in receiver.requests)
    assert {q["path"] for q in receiver.requests} == {"/wuma/payouts?shop=1"}
    assert {q["type"] for q in receiver.requests} == {"application/json"}
    redeem = receiver.requests[2]["body"]
    assert redeem == {"seq": payable[2], "idempotency_key": key_of(ledger, payable[2]), "kind": "redeem",
                      "at": T0, "amount": 500, "unit": "cash",
                      "beneficiary": {"role": "store", "id": "S-001"}, "campaign": 3,
                      "pool": "summer", "scan": None, "ref": payable[2] - 1, "settle_with": "D-7"}
    for s in payable:
        st = payouts.state(s)
        assert (st["state"], st["attempts"], st["paid_at"]) == ("paid", 1, T0)
        assert st["last_status"] == 200
    assert payouts.summary() == {
        "pending": {"count": 0, "amount": {}},
        "paid": {"count": 4, "amount": {"cash": 800, "points": 30}},
        "rejected": {"count": 0, "amount": {}},
        "cancelled": {"count": 0, "amount": {}}}
    # Nothing left: the next pass sends nothing; new entries are picked up by the cursor.
    assert payouts.deliver_once(receiver.url, SECRET, now=T0)["sent"] == 0
    late = add(store, ledger, "grant", 5)
    assert payouts.deliver_once(receiver.url, SECRET, now=T0) == {
        "taken_in": 1, "sent": 1, "paid": 1, "failed": 0, "rejected": 0, "cancelled": 0}
    assert receiver.keys()[-1] == key_of(ledger, late)


def test_not_paid_until_2xx_and_backoff_doubles_to_one_hour(store, ledger, payouts, receiver):
    seq = add(store, ledger)
    receiver.plan = ["500"] * 9
    now, waits = T0, []
    for i in range(9):
        r = payouts.deliver_once(receiver.url, SECRET, now=now)
        assert (r["sent"], r["failed"], r["paid"]) == (1, 1, 0)
        st = payouts.state(seq)
        assert (st["state"], st["attempts"], st["last_status"]) == ("pending", i + 1, 500)
        assert st["last_error"] == "HTTP 500 Internal Server Error: database on fire"
        assert st["paid_at"] is None and seq not in [*receiver.accepted]
        # Not due a second early: nothing is sent.
        assert payouts.deliver_once(receiver.url, SECRET, now=st["next_at"] - 1)["sent"] == 0
        waits.append(st["next_at"] - now)
        now = st["next_at"]
    assert waits == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]

    assert payouts.deliver_once(receiver.url, SECRET, now=now)["paid"] == 1
    st = payouts.state(seq)
    assert (st["state"], st["attempts"], st["paid_at"], st["last_error"]) == ("paid", 10, now, None)
    assert receiver.keys() == [key_of(ledger, seq)] * 10 and list(receiver.accepted) == [key_of(ledger, seq)]


@pytest.mark.parametrize("failure", ["timeout", "drop"])
def test_lost_answer_resends_same_key_and_receiver_dedupes(store, ledger, payouts, receiver,
                                                           failure):
    seq = add(store, ledger)
    receiver.plan = [failure]
    r = payouts.deliver_once(receiver.url, SECRET, now=T0, timeout=0.3)
    assert (r["sent"], r["failed"], r["paid"]) == (1, 1, 0)
    st = payouts.state(seq)
    # The receiver has it, but without an answer Wuma does not call it paid.
    assert list(receiver.accepted) == [key_of(ledger, seq)]
    assert (st["state"], st["last_status"], st["maybe_delivered"]) == ("pending", None, True)
    error = "TimeoutError" if failure == "timeout" else "RemoteDisconnected"
    assert st["last_error"].startswith(error)

    receiver.release.set()
    assert payouts.deliver_once(receiver.url, SECRET, now=st["next_at"])["paid"] == 1
    assert receiver.keys() == [key_of(ledger, seq), key_of(ledger, seq)]
    first, second = (q["raw"] for q in receiver.requests)
    assert first == second  # same bytes each time, freshly signed
    assert len(receiver.accepted) == 1
    assert payouts.state(seq)["state"] == "paid"


def test_failure_stops_the_pass_and_keeps_the_rest_unsent(store, ledger, payouts, receiver):
    seqs = [add(store, ledger) for _ in range(3)]
    receiver.plan = ["500"]
    r = payouts.deliver_once(receiver.url, SECRET, now=T0)
    assert (r["sent"], r["failed"]) == (1, 1)
    # The others were leased with it, then released: never sent, so still cancellable.
    assert [payouts.state(s)["attempts"] for s in seqs] == [1, 0, 0]
    assert [payouts.state(s)["leased_until"] for s in seqs] == [0.0, 0.0, 0.0]
    # The next pass sends the others; the failed one waits for its backoff.
    r = payouts.deliver_once(receiver.url, SECRET, now=T0 + 1)
    assert (r["sent"], r["paid"]) == (2, 2)
    assert receiver.keys() == [key_of(ledger, s) for s in (seqs[0], seqs[1], seqs[2])]
    assert payouts.deliver_once(receiver.url, SECRET, now=T0 + 30)["paid"] == 1


def test_429_honours_retry_after(store, ledger, payouts, receiver):
    seq = add(store, ledger)
    receiver.plan = ["429"]
    payouts.deliver_once(receiver.url, SECRET, now=T0)
    st = payouts.state(seq)
    assert (st["state"], st["last_status"], st["next_at"]) == ("pending", 429, T0 + 600)


def test_a_retry_after_that_is_not_a_number_is_ignored(store, ledger, payouts, receiver):
    seq = add(store, ledger)
    receiver.plan = ["429 odd"]
    assert payouts.deliver_once(receiver.url, SECRET, now=T0)["sent"] == 1  # no ValueError mid-batch
    st = payouts.state(seq)
    assert (st["state"], st["last_status"]) == ("pending", 429) and T0 < st["next_at"] < T0 + 600


@pytest.mark.parametrize("answer", ["422 across", "422 cut"])
def test_no_part_of_the_secret_is_kept_in_last_error(store, ledger, payouts, receiver, answer):
    """Before, the answer was cut to 200 characters and then the secret taken out: echoed
    across the cut, all of the secret but its end was kept (shown to viewers, logged,
    audited on a retry)."""
    seq = add(store, ledger)
    receiver.plan = [answer]
    payouts.deliver_once(receiver.url, SECRET, now=T0)
    error = payouts.state(seq)["last_error"]
    assert error.startswith("HTTP 422 Unprocessable Entity: unknown beneficiary ") and "[redacted]" in error
    assert not any(SECRET[i:i + 6] in error for i in range(len(SECRET) - 5)), error


def test_rejected_waits_for_an_operator_then_retry_is_audited(store, ledger, payouts, receiver):
    audit = AuditLog(store)
    seq = add(store, ledger, amount=300)
    receiver.plan = ["422"]
    r = payouts.deliver_once(receiver.url, SECRET, now=T0)
    assert (r["sent"], r["rejected"]) == (1, 1)
    st = payouts.state(seq)
    assert (st["state"], st["last_status"], st["maybe_delivered"]) == ("rejected", 422, False)
    assert st["last_error"].startswith("HTTP 422 Unprocessable Entity: unknown beneficiary ")
    assert SECRET not in st["last_error"] and "[redacted]" in st["last_error"]
    assert len(st["last_error"]) <= 400
    assert payouts.summary()["rejected"] == {"count": 1, "amount": {"cash": 300}}
    assert payouts.deliver_once(receiver.url, SECRET, now=T0 + 86400)["sent"] == 0

    with pytest.raises(Conflict, match="only a rejected payout"):
        payouts.retry(add(store, ledger), who="cli:ops")
    assert payouts.retry(seq, who="cli:ops", now=T0 + 10)["state"] == "pending"
    a = audit.entries(newest_first=True, limit=1)[0]
    assert (a["who"], a["action"], a["target"]) == ("cli:ops", "payout.retry", str(seq))
    assert a["at"] == T0 + 10
    assert a["details"]["last_status"] == 422 and SECRET not in json.dumps(a)

    assert payouts.deliver_once(receiver.url, SECRET, now=T0 + 10)["paid"] == 2
    assert payouts.state(seq)["state"] == "paid"
    assert receiver.keys().count(key_of(ledger, seq)) == 2  # same key on the retry


def test_wrong_secret_on_the_receiver_fails_and_rejects_nothing(store, ledger, payouts):
    seqs = [add(store, ledger) for _ in range(2)]
    other = Receiver(secret="another-secret-entirely-0123456789")
    try:
        r = payouts.deliver_once(other.url, SECRET, now=T0)
        assert (r["sent"], r["failed"], r["paid"], r["rejected"]) == (1, 1, 0, 0)
        assert [q["signature_ok"] for q in other.requests] == [False]
        st = payouts.state(seqs[0])
        assert (st["state"], st["last_status"]) == ("pending", 401)  # retried, not rejected
        assert not st["maybe_delivered"]  # a 4xx: the receiver did not take it
        assert payouts.state(seqs[1])["attempts"] == 0
        assert other.accepted == {}
    finally:
        other.close()


def test_unreachable_receiver_is_a_failure(store, ledger, payouts):
    seq = add(store, ledger)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = payouts.deliver_once(f"http://127.0.0.1:{port}/", SECRET, now=T0, timeout=1)
    assert (r["sent"], r["failed"]) == (1, 1)
    assert payouts.state(seq)["last_error"].startswith("ConnectionRefusedError")
    assert not payouts.state(seq)["maybe_delivered"]  # nothing went out


def test_two_deliverers_at_once_do_not_duplicate(store, ledger, receiver):
    seqs = [add(store, ledger) for _ in range(30)]
    receiver.delay = 0.01  # both deliverers are busy at the same time
    one = Payouts(store, ledger, AuditLog(store))
    two = Payouts(store, ledger, AuditLog(store))
    results = {}
    start = threading.Barrier(2)

    def go(name, p):
        start.wait()
        results[name] = p.deliver_once(receiver.url, SECRET)

    threads = [threading.Thread(target=go, args=(n, p)) for n, p in (("one", one), ("two", two))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results["one"]["paid"] + results["two"]["paid"] == 30
    assert sorted(receiver.keys()) == sorted(key_of(ledger, s) for s in seqs)  # each exactly once
    assert one.summary()["paid"]["count"] == 30


def test_crash_after_send_resends_after_the_lease_with_the_same_key(tmp_path, store, ledger,
                                                                    payouts, receiver):
    """A deliverer process dies with a request in flight: its lease keeps other deliverers
    off the entry until it expires; then the entry is sent again and deduplicated."""
    seq = add(store, ledger)
    receiver.plan = ["hang"]
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import os, sys\n"
         "from engine.store import Store\n"
         "from admin.ledger import Ledger\n"
         "from admin.audit import AuditLog\n"
         "from admin.payouts import Payouts\n"
         "s = Store(sys.argv[1])\n"
         "Payouts(s, Ledger(s), AuditLog(s)).deliver_once(sys.argv[2],"
         " os.environ['WUMA_PAYOUT_SECRET'], timeout=30)\n",
         str(tmp_path / "db"), receiver.url],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "WUMA_PAYOUT_SECRET": SECRET})
    try:
        assert receiver.hanging.wait(20), "the child deliverer never sent"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    receiver.release.set()

    st = payouts.state(seq)
    assert (st["state"], st["attempts"]) == ("pending", 1) and st["leased_until"] > time.time()
    with pytest.raises(Conflict, match="already sent to the payment system"):
        with store.write() as txn:
            payouts.cancel_in(txn, seq)
    assert payouts.deliver_once(receiver.url, SECRET)["sent"] == 0  # still leased
    r = payouts.deliver_once(receiver.url, SECRET, now=st["leased_until"] + 1)
    assert (r["sent"], r["paid"]) == (1, 1)
    assert receiver.keys() == [key_of(ledger, seq)] * 2 and len(receiver.accepted) == 1
    assert payouts.state(seq)["attempts"] == 2


def test_a_trickling_answer_is_cut_off_at_the_deadline(store, ledger, payouts, receiver):
    """``timeout`` bounds the whole request, not each read: an answer trickling in a byte
    at a time would otherwise keep the request alive past its lease, and a second
    deliverer would send the entry while this copy is still in flight."""
    seq = add(store, ledger)
    receiver.plan = ["trickle"]
    receiver.trickle_every = 0.2  # 20 bytes: 4 s in all, every read well within 0.6 s
    start = time.monotonic()
    r = payouts.deliver_once(receiver.url, SECRET, now=T0, timeout=0.6)
    took = time.monotonic() - start
    assert (r["sent"], r["failed"], r["paid"]) == (1, 1, 0)
    assert took < 2.0, f"the request ran {took:.1f} s with a 0.6 s timeout"
    assert receiver.cut_off.wait(2)  # Wuma hung up; the receiver did not finish its answer
    st = payouts.state(seq)
    assert (st["state"], st["last_status"], st["attempts"]) == ("pending", None, 1)
    assert st["last_error"] == "TimeoutError: no complete answer within 0.6 s"
    assert st["maybe_delivered"]  # the receiver took it (a 200 was on its way)
    with pytest.raises(Conflict, match="already sent"):
        with store.write() as txn:
            payouts.cancel_in(txn, seq)


@pytest.mark.parametrize(("action", "state", "status", "maybe"), [
    ("422 cut", "rejected", 422, False),      # Content-Length 5000, ~100 bytes, then closed
    ("422 trickle", "rejected", 422, False),  # its body still coming at the deadline
    ("500 cut", "pending", 500, True),
])
def test_the_status_line_decides_a_non_2xx_whatever_happens_to_its_body(
        store, ledger, payouts, receiver, action, state, status, maybe):
    """A 4xx status line is a definite refusal even if its body never arrives in full: the
    entry is rejected, not maybe delivered, so it can be reversed."""
    seq = add(store, ledger, amount=300)
    receiver.plan = [action]
    start = time.monotonic()
    r = payouts.deliver_once(receiver.url, SECRET, now=T0, timeout=0.6)
    assert time.monotonic() - start < 2.0
    assert r["sent"] == 1 and r["rejected" if state == "rejected" else "failed"] == 1
    st = payouts.state(seq)
    assert (st["state"], st["last_status"], st["maybe_delivered"]) == (state, status, maybe)
    reason = "Unprocessable Entity: unknown beneficiary" if status == 422 else \
        "Internal Server Error: database on fire"
    assert st["last_error"].startswith(f"HTTP {status} {reason}")
    assert not receiver.accepted
    if state == "rejected":
        with store.write() as txn:
            assert payouts.cancel_in(txn, seq, now=T0 + 1)["state"] == "cancelled"
    else:
        with pytest.raises(Conflict, match="already sent"):
            with store.write() as txn:
                payouts.cancel_in(txn, seq)


@pytest.mark.parametrize(("action", "error"), [
    ("200 cut", "IncompleteRead"),            # Content-Length 100, 9 bytes, then closed
    ("200 chunked cut", "IncompleteRead"),    # no last chunk
    ("200 close trickle", "TimeoutError: no complete answer within 0.6 s"),  # no length
])
def test_a_2xx_whose_body_is_cut_short_is_not_paid(store, ledger, payouts, receiver, action,
                                                   error):
    """However the body is framed, a 2xx cut short is no answer: the receiver may have
    paid, so the entry is sent again under the same key (and cannot be reversed)."""
    seq = add(store, ledger)
    receiver.plan = [action]
    receiver.trickle_every = 0.2  # "200 close trickle": 4 s in all, past the 0.6 s deadline
    start = time.monotonic()
    r = payouts.deliver_once(receiver.url, SECRET, now=T0, timeout=0.6)
    assert time.monotonic() - start < 2.0
    assert (r["sent"], r["failed"], r["paid"]) == (1, 1, 0)
    st = payouts.state(seq)
    assert (st["state"], st["last_status"], st["maybe_delivered"]) == ("pending", None, True)
    assert st["last_error"].startswith(error)
    assert list(receiver.accepted) == [key_of(ledger, seq)]
    with pytest.raises(Conflict, match="already sent"):
        with store.write() as txn:
            payouts.cancel_in(txn, seq)
    assert payouts.deliver_once(receiver.url, SECRET, now=st["next_at"])["paid"] == 1
    assert receiver.keys() == [key_of(ledger, seq)] * 2 and len(receiver.accepted) == 1


@pytest.mark.parametrize("action", ["200 close", "200 big"])
def test_a_2xx_answered_in_full_is_paid_however_it_is_framed(store, ledger, payouts, receiver,
                                                             action):
    """Closed by the receiver before the deadline (no Content-Length), or longer than the
    4096 bytes read for error messages: read to its end, it is paid."""
    seq = add(store, ledger)
    receiver.plan = [action]
    r = payouts.deliver_once(receiver.url, SECRET, now=T0, timeout=2)
    assert (r["sent"], r["paid"]) == (1, 1)
    st = payouts.state(seq)
    assert (st["state"], st["last_status"], st["last_error"]) == ("paid", 200, None)


class _SkewedTime:
    """The ``time`` module as admin.payouts sees it, its monotonic clock moved on by
    ``skew`` seconds (slow writes, a paused process) without waiting."""

    def __init__(self) -> None:
        self.skew = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.skew

    def __getattr__(self, name):
        return getattr(time, name)


def test_a_lease_eaten_by_slow_writes_is_released_and_the_rest_leased_afresh(
        store, ledger, payouts, receiver, monkeypatch):
    """Before each request the lease must have ``timeout + 5`` seconds left; if not, the
    rest of the chunk is released (never sent: attempts back) and leased afresh."""
    import admin.payouts as payouts_module

    seqs = [add(store, ledger) for _ in range(3)]
    clock = _SkewedTime()
    monkeypatch.setattr(payouts_module, "time", clock)
    real_post, real_lease = payouts_module._post, payouts._lease
    leases = []

    def lease(*args, **kwargs):
        batch = real_lease(*args, **kwargs)
        leases.append([s for s, *_ in batch])
        return batch

    def post(*args, **kwargs):
        answer = real_post(*args, **kwargs)
        clock.skew += 1000.0  # this request (or its write) "ate" the whole lease
        return answer

    monkeypatch.setattr(payouts_module, "_post", post)
    monkeypatch.setattr(payouts, "_lease", lease)
    r = payouts.deliver_once(receiver.url, SECRET, now=T0, timeout=1)
    assert (r["sent"], r["paid"], r["failed"]) == (3, 3, 0)
    # Each chunk sent one entry, then gave the rest back and leased them again.
    assert leases == [seqs, seqs[1:], seqs[2:]]
    assert receiver.keys() == [key_of(ledger, s) for s in seqs]
    st = [payouts.state(s) for s in seqs]
    assert [x["attempts"] for x in st] == [1, 1, 1]  # the releases gave their attempts back
    assert [x["state"] for x in st] == ["paid"] * 3


def test_a_lease_that_itself_took_too_long_ends_the_pass_unsent(store, ledger, payouts, receiver,
                                                                monkeypatch):
    """If the lease is already too short for the first request (``i == 0``), the whole
    chunk is released and the pass ends: nothing sent, nothing counted as an attempt."""
    import admin.payouts as payouts_module

    seqs = [add(store, ledger) for _ in range(3)]
    clock = _SkewedTime()
    monkeypatch.setattr(payouts_module, "time", clock)
    real_lease = payouts._lease
    calls = []

    def slow_lease(*args, **kwargs):
        batch = real_lease(*args, **kwargs)
        calls.append([s for s, *_ in batch])
        if len(calls) == 1:
            clock.skew += 1000.0  # the first lease's own write took longer than the lease
        return batch

    monkeypatch.setattr(payouts, "_lease", slow_lease)
    r = payouts.deliver_once(receiver.url, SECRET, now=T0, timeout=1)
    assert (r["sent"], r["paid"], r["failed"]) == (0, 0, 0)
    assert calls == [seqs]  # one lease, then the pass ended (no loop of re-leasing)
    assert receiver.keys() == []
    for s in seqs:
        st = payouts.state(s)
        assert (st["state"], st["attempts"], st["leased_until"]) == ("pending", 0, 0.0)
        assert st["maybe_delivered"] is False
    with store.write() as txn:  # never sent: still reversible
        assert payouts.cancel_in(txn, seqs[0], now=T0)["state"] == "cancelled"

    r = payouts.deliver_once(receiver.url, SECRET, now=T0, timeout=1)  # a prompt lease sends
    assert calls[1:] == [seqs[1:]]
    assert (r["sent"], r["paid"], r["cancelled"]) == (2, 2, 0)
    assert receiver.keys() == [key_of(ledger, s) for s in seqs[1:]]


def test_run_delivers_until_stopped(store, ledger, payouts, receiver):
    seqs = [add(store, ledger) for _ in range(3)]
    receiver.plan = ["500"]
    stop = threading.Event()
    t = threading.Thread(target=payouts.run, args=(receiver.url, SECRET, stop),
                         kwargs={"interval": 0.02})
    t.start()
    try:
        deadline = time.time() + 5
        while len(receiver.accepted) < 2 and time.time() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        t.join(5)
    assert not t.is_alive()
    # The first failed (backoff 30 s, real time); the other two went through.
    assert [payouts.state(s)["state"] for s in seqs] == ["pending", "paid", "paid"]


# -- cancellation --------------------------------------------------------------------------

def test_cancel_in_only_before_anything_was_sent(store, ledger, payouts, receiver):
    early = add(store, ledger, amount=1)       # cancelled before any pass took it in
    unsent = add(store, ledger, amount=2)
    paid = add(store, ledger, amount=8)
    failed = add(store, ledger, amount=4)
    with store.write() as txn:
        ledger.append(txn, {"kind": "reversal", "at": T0, "amount": 1, "unit": "cash",
                            "campaign": 3, "pool": "summer", "scan": None, "ref": early})
        assert payouts.cancel_in(txn, early, now=T0)["state"] == "cancelled"
    with pytest.raises(Conflict, match="already cancelled"):
        with store.write() as txn:
            payouts.cancel_in(txn, early)

    # Deliver `paid`, fail `failed` (leaving `unsent` never sent).
    with store.write() as txn:
        payouts.cancel_in(txn, unsent)
    receiver.plan = ["ok", "500"]
    r = payouts.deliver_once(receiver.url, SECRET, now=T0)
    assert (r["sent"], r["paid"], r["failed"]) == (2, 1, 1)
    assert receiver.keys() == [key_of(ledger, paid), key_of(ledger, failed)]
    assert payouts.state(failed)["state"] == "pending" and payouts.state(paid)["state"] == "paid"

    before = ledger.last_seq()
    for seq in (failed, paid):
        with pytest.raises(Conflict, match="already sent to the payment system"):
            with store.write() as txn:
                ledger.append(txn, {"kind": "reversal", "at": T0, "amount": 0, "unit": "cash",
                                    "campaign": 3, "pool": "summer", "scan": None, "ref": seq})
                payouts.cancel_in(txn, seq)
    assert ledger.last_seq() == before  # the reversal was rolled back with the refusal
    assert payouts.summary()["cancelled"] == {"count": 2, "amount": {"cash": 3}}
    with pytest.raises(ValueError, match="not payable"):
        with store.write() as txn:
            payouts.cancel_in(txn, before)  # the reversal entry itself
    with pytest.raises(NotFound):
        with store.write() as txn:
            payouts.cancel_in(txn, 9999)
    assert key_of(ledger, early) not in receiver.keys() and key_of(ledger, unsent) not in receiver.keys()


def test_a_payout_the_payment_system_refused_can_be_cancelled(store, ledger, payouts, receiver):
    """A 4xx (rejected) says the payment system will not pay it: the entry may be reversed,
    and is never sent again."""
    seq = add(store, ledger, amount=300)
    receiver.plan = ["422"]
    assert payouts.deliver_once(receiver.url, SECRET, now=T0)["rejected"] == 1
    with store.write() as txn:
        assert payouts.cancel_in(txn, seq, now=T0 + 5)["state"] == "cancelled"
    with pytest.raises(Conflict, match="only a rejected payout"):
        payouts.retry(seq, who="cli:ops")
    assert payouts.deliver_once(receiver.url, SECRET, now=T0 + 86400)["sent"] == 0
    assert payouts.summary()["cancelled"] == {"count": 1, "amount": {"cash": 300}}


@pytest.mark.parametrize("first", ["drop", "timeout", "500"])
def test_a_rejected_payout_an_earlier_attempt_may_have_delivered_cannot_be_cancelled(
        store, ledger, payouts, receiver, first):
    """The receiver took the first copy (paid), its answer was lost or a 5xx; the next
    copy is refused with 409 "idempotency key already used": rejected, but possibly paid.
    A reversal must not return its budget."""
    seq = add(store, ledger, amount=300)
    receiver.plan = [first, "409"]
    assert payouts.deliver_once(receiver.url, SECRET, now=T0, timeout=0.3)["failed"] == 1
    receiver.release.set()
    st = payouts.state(seq)
    assert st["maybe_delivered"]  # (this receiver's 500 kept nothing; another's may have)
    assert payouts.deliver_once(receiver.url, SECRET, now=st["next_at"])["rejected"] == 1
    st = payouts.state(seq)
    assert (st["state"], st["last_status"], st["attempts"]) == ("rejected", 409, 2)
    assert st["maybe_delivered"]
    before = ledger.last_seq()
    with pytest.raises(Conflict, match="may have been paid: settle it in the payment system"):
        with store.write() as txn:
            ledger.append(txn, {"kind": "reversal", "at": T0, "amount": 300, "unit": "cash",
                                "campaign": 3, "pool": "summer", "scan": None, "ref": seq})
            payouts.cancel_in(txn, seq)
    assert ledger.last_seq() == before and payouts.state(seq)["state"] == "rejected"
    assert payouts.summary()["cancelled"]["count"] == 0


def test_a_2xx_never_recorded_counts_as_maybe_delivered(store, ledger, payouts, receiver,
                                                        monkeypatch):
    """The receiver paid and answered 200, but the deliverer could not write "paid" (it
    died, the disk was full): its lease stays on the record, so the next lease knows
    that attempt may have been delivered; a 409 after that is not cancellable."""
    seq = add(store, ledger)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(payouts, "_finish", full_disk)
        with pytest.raises(OSError):
            payouts.deliver_once(receiver.url, SECRET, now=T0)
    assert list(receiver.accepted) == [key_of(ledger, seq)]
    leased_until = payouts.state(seq)["leased_until"]
    receiver.plan = ["409"]
    assert payouts.deliver_once(receiver.url, SECRET, now=leased_until + 1)["rejected"] == 1
    st = payouts.state(seq)
    assert (st["state"], st["attempts"], st["maybe_delivered"]) == ("rejected", 2, True)
    with pytest.raises(Conflict, match="settle it in the payment system"):
        with store.write() as txn:
            payouts.cancel_in(txn, seq)


@pytest.mark.parametrize("first", ["429", "401", "refused"])
def test_a_rejected_payout_whose_attempts_were_all_refused_can_be_cancelled(
        store, ledger, payouts, receiver, first):
    """A 4xx, or a connection that never opened, is a definite refusal of that attempt."""
    seq = add(store, ledger, amount=300)
    if first == "refused":
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}/"
    else:
        url = receiver.url if first == "429" else \
            Receiver(secret="another-secret-entirely-0123456789").url
        receiver.plan = ["429"] if first == "429" else []
    assert payouts.deliver_once(url, SECRET, now=T0, timeout=1)["failed"] == 1
    receiver.plan = ["409"]
    assert payouts.deliver_once(receiver.url, SECRET, now=T0 + 3600)["rejected"] == 1
    st = payouts.state(seq)
    assert (st["state"], st["attempts"], st["maybe_delivered"]) == ("rejected", 2, False)
    with store.write() as txn:
        assert payouts.cancel_in(txn, seq, now=T0 + 3601)["state"] == "cancelled"


@pytest.mark.parametrize(("attempts", "cancellable"), [(1, True), (2, False)])
def test_a_rejected_record_from_before_maybe_delivered_is_decided_conservatively(
        store, ledger, payouts, receiver, attempts, cancellable):
    """Records written before the field existed: one attempt, rejected, was answered with
    a 4xx (definitely refused); with more, an earlier one may have been delivered."""
    from engine.store import pack, u64, unpack

    seq = add(store, ledger)
    receiver.plan = ["422"]
    payouts.deliver_once(receiver.url, SECRET, now=T0)
    db = store.db("adm_payouts")
    with store.write() as txn:
        rec = unpack(txn.get(u64(seq), db=db))
        del rec["maybe_delivered"]
        rec["attempts"] = attempts
        txn.put(u64(seq), pack(rec), db=db)
    assert payouts.state(seq)["maybe_delivered"] is not cancellable
    if cancellable:
        with store.write() as txn:
            assert payouts.cancel_in(txn, seq)["state"] == "cancelled"
    else:
        with pytest.raises(Conflict, match="settle it in the payment system"):
            with store.write() as txn:
                payouts.cancel_in(txn, seq)


def test_reversed_without_cancel_in_is_never_sent(store, ledger, payouts, receiver):
    seq = add(store, ledger)
    add(store, ledger, "reversal", ref=seq)  # a caller that forgot cancel_in
    r = payouts.deliver_once(receiver.url, SECRET, now=T0)
    assert (r["sent"], r["cancelled"]) == (0, 1)
    assert payouts.state(seq)["state"] == "cancelled" and receiver.requests == []


# -- export --------------------------------------------------------------------------------

def test_export_csv_and_jsonl_hold_exactly_the_payable_entries(tmp_path, store, ledger, payouts,
                                                             receiver):
    payable = mixed_ledger(store, ledger)
    receiver.plan = ["ok", "500"]
    payouts.deliver_once(receiver.url, SECRET, now=T0)  # first paid, second failed

    out = tmp_path / "payouts.csv"
    assert payouts.export(out) == 4
    assert not (tmp_path / "payouts.csv.part").exists()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with out.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == EXPORT_FIELDS
    assert out.read_bytes().startswith(b"\xef\xbb\xbf" + b"seq,")  # Excel: UTF-8, not GBK
    assert [int(r["seq"]) for r in rows] == payable
    assert [r["state"] for r in rows] == ["paid", "pending", "pending", "pending"]
    assert rows[2] == {"seq": str(payable[2]), "at": str(T0), "kind": "redeem", "amount": "500",
                       "unit": "cash", "beneficiary_role": "store", "beneficiary_id": "S-001",
                       "campaign": "3", "pool": "summer", "scan": "", "ref": str(payable[2] - 1),
                       "settle_with": "D-7", "idempotency_key": key_of(ledger, payable[2]),
                       "state": "pending", "attempts": "0", "paid_at": ""}
    assert rows[0]["paid_at"] == str(T0) and rows[1]["attempts"] == "1"

    jl = tmp_path / "payouts.jsonl"
    assert payouts.export(jl, "jsonl", after=payable[0]) == 3
    lines = [json.loads(x) for x in jl.read_text("utf-8").splitlines()]
    assert [x["seq"] for x in lines] == payable[1:]
    # A JSON line is the webhook body plus the payout state.
    assert {k: v for k, v in lines[0].items() if k not in ("state", "attempts", "paid_at")} \
        == receiver.requests[1]["body"]
    assert payouts.export(tmp_path / "paid.jsonl", "jsonl", state="paid") == 1
    assert payouts.export(tmp_path / "none.csv", state="cancelled") == 0
    assert (tmp_path / "none.csv").read_text("utf-8-sig") == ",".join(EXPORT_FIELDS) + "\n"


def test_export_to_an_open_file_is_the_file_export(tmp_path, store, ledger, payouts):
    """``wuma ledger export -o -`` (standard output, a pipe) writes what the file holds, but
    for the CSV file's byte-order mark (for Excel; a pipe goes to a program)."""
    import io

    mixed_ledger(store, ledger)
    for fmt, mark in (("csv", b"\xef\xbb\xbf"), ("jsonl", b"")):
        payouts.export(tmp_path / f"p.{fmt}", fmt)
        buf = io.StringIO(newline="")
        assert payouts.write_export(buf, fmt) == 4
        assert mark + buf.getvalue().encode() == (tmp_path / f"p.{fmt}").read_bytes()


def test_export_checks_its_arguments(tmp_path, payouts):
    for kwargs, msg in (({"fmt": "xlsx"}, "csv or jsonl"), ({"state": "lost"}, "one of"),
                        ({"after": -1}, "after")):
        with pytest.raises(ValueError, match=msg):
            payouts.export(tmp_path / "x", **kwargs)
    assert list(tmp_path.iterdir()) == [tmp_path / "db"]


# -- configuration and secrets ---------------------------------------------------------------

@pytest.mark.parametrize("url", ["ftp://pay.example.cn/x", "file:///etc/passwd", "javascript:x",
                                 "pay.example.cn/hook", "https://", "https://u:pw@pay.example.cn/",
                                 "https://pay.example.cn:99999/"])
def test_webhook_url_must_be_http_or_https(payouts, url):
    with pytest.raises(ValueError, match="URL") as e:
        payouts.deliver_once(url, SECRET)
    assert "pw" not in str(e.value) and SECRET not in str(e.value)


def test_secret_must_be_given_and_is_never_echoed(payouts):
    with pytest.raises(ValueError, match="at least 16") as e:
        payouts.deliver_once("https://pay.example.cn/", "short-secret")
    assert "short-secret" not in str(e.value)
    with pytest.raises(TypeError):
        payouts.deliver_once("https://pay.example.cn/", None)


def test_secret_is_not_stored_or_logged(tmp_path, store, ledger, payouts, receiver, caplog):
    seqs = [add(store, ledger) for _ in range(3)]
    receiver.plan = ["422", "500"]
    with caplog.at_level("DEBUG"):
        payouts.deliver_once(receiver.url, SECRET, now=T0)
        payouts.deliver_once(receiver.url, SECRET, now=T0 + 30)
        payouts.export(tmp_path / "p.csv")
    assert "payout" in caplog.text and SECRET not in caplog.text
    assert [payouts.state(s)["state"] for s in seqs] == ["rejected", "paid", "paid"]
    for f in (tmp_path / "db").iterdir():
        assert SECRET.encode() not in f.read_bytes()
    assert SECRET not in (tmp_path / "p.csv").read_text()


def test_state_of_unknown_or_unpayable_entries(store, ledger, payouts):
    assert STATES == ("pending", "paid", "rejected", "cancelled")
    lk = add(store, ledger, "locked")
    g = add(store, ledger)
    with pytest.raises(NotFound, match="not payable"):
        payouts.state(lk)
    with pytest.raises(NotFound, match="no ledger entry"):
        payouts.state(g + 1)
    assert payouts.state(g) == {"seq": g, "state": "pending", "attempts": 0, "last_status": None,
                                "last_error": None, "next_at": 0.0, "leased_until": 0.0,
                                "paid_at": None, "cancelled_at": None, "amount": 188,
                                "unit": "cash", "maybe_delivered": False,
                                "idempotency_key": key_of(ledger, g)}


@pytest.mark.parametrize("seq", [0, -1, 2**63, 2**64])
def test_sequence_numbers_out_of_range_are_not_found(store, ledger, payouts, seq):
    with pytest.raises(NotFound, match="no ledger entry"):
        payouts.state(seq)
    with pytest.raises(NotFound, match="no ledger entry"):
        payouts.retry(seq, who="cli:ops")


@pytest.mark.parametrize("after", [-1, 2**63, 2**64])
def test_listings_refuse_an_after_out_of_range(store, ledger, after):
    with pytest.raises(ValueError, match="after: a sequence number"):
        ledger.entries(after=after)
    with pytest.raises(ValueError, match="after: a sequence number"):
        AuditLog(store).entries(after=after)

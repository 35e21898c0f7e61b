"""Acknowledged writes other than scans survive ``kill -9`` of the process that made them,
and a crash at any moment leaves no partial state (the scans' own test is in test_http.py).

Real processes are killed with SIGKILL at the worst moments: the whole server under mixed
writes (rewards, voucher redemptions, reversals, top-ups, sweeps), a payout deliverer
right after the receiver answered 200, a pack export between its steps. A ``relaxed`` data
folder may lose its last commit to a power loss (not a process crash): the writes whose
acknowledgement lets something leave the store are forced to disk there too.
"""

from __future__ import annotations

import http.client
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import test_payouts
from conftest_world import Clock, build_world
from server import Server
from test_payouts import SECRET, Receiver

from admin.service import Admin
from engine import DataFolder
from engine.lines import generate_line_keys, load_brand_keys
from engine.packs import PackError, PackRegistry, open_pack_to_file
from engine.scan import ScanRequest

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_800_000_000.0
receiver = test_payouts.receiver


def _child(source: str, *args) -> subprocess.CompletedProcess:
    """Run ``source`` in a new Python process (which may kill itself at a chosen moment)."""
    return subprocess.run([sys.executable, "-c", source, *map(str, args)], cwd=ROOT, timeout=120,
                          check=False, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True)


# -- pack export: a pack that opens is a registered pack ----------------------------------------
_EXPORT = r'''
import os, signal, sys
from pathlib import Path
import engine.packs as P
from engine import DataFolder
from engine.store import Store

data_path, out, moment, files = sys.argv[1:]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if files == "named":
    P._ANONYMOUS_PARTS = 0
if moment == "placed":  # right after the first part got its name
    P._place_new = lambda file, _place=P._place_new: (_place(file), die())
if moment == "registered":  # right after the registration is on disk
    sync = Store.sync
    Store.sync = lambda self: (sync(self), die())
parts = []
def progress(n):  # "written": while part 2 is written (part 1 is complete)
    parts.append(n)
    if moment == "written" and len(parts) == 2:
        die()
with DataFolder(Path(data_path)) as data:
    P.PackRegistry(data).export(1, "L1", Path(out), parts=3, chunk_bytes=8192, progress=progress)
'''


@pytest.fixture
def pack_world(tmp_path):
    with DataFolder.init(tmp_path / "wuma-data") as data:
        reg = PackRegistry(data)
        (tmp_path / "brand-keys.json").write_bytes(reg.lines.brand_keys())
        keys = generate_line_keys(tmp_path / "line1", brand_keys=(tmp_path / "brand-keys.json").read_bytes())
        reg.lines.add("L1", (tmp_path / "line1" / "line.pub").read_bytes())
        data.create_batch("cap", 3000)
    return tmp_path, keys, load_brand_keys(tmp_path / "brand-keys.json")


@pytest.mark.parametrize("moment, files", [("written", "unnamed"), ("placed", "unnamed"),
                                           ("registered", "unnamed"), ("written", "named"),
                                           ("placed", "named")])
def test_pack_export_killed_at_any_moment_leaves_no_pack_the_registry_does_not_know(
        pack_world, moment, files):
    """Before, the files were placed before the registration committed, and every part was
    signed as soon as written: a kill left openable packs (under their final names, or as
    hidden .part files) that no `pack list` shows."""
    tmp, keys, brand = pack_world
    out = tmp / "packs"
    got = _child(_EXPORT, tmp / "wuma-data", out, moment, files)
    assert got.returncode == -signal.SIGKILL, got.stderr.decode()[-2000:]
    with DataFolder(tmp / "wuma-data") as data:
        listed = PackRegistry(data).list()
    registered = {p["id"] for p in listed}
    opened = {}
    for f in sorted(out.iterdir()) if out.exists() else []:
        try:
            opened[f.name] = open_pack_to_file(f, keys, brand, tmp / "codes.csv").id
        except PackError:
            pass  # unsigned: no line opens it
    assert set(opened.values()) <= registered, opened
    if moment == "written":
        assert registered == set() and opened == {}
    else:
        assert len(registered) == 3  # on disk before any file was placed
        # the listing says which packs have no file (the operator revokes and exports again)
        placed = {p["id"] for p in listed if p["file_present"]}
        assert placed == set(opened.values()) and len(placed) == (1 if moment == "placed" else 0)
    if files == "unnamed" and moment != "placed":
        assert list(out.iterdir()) == []  # nothing left behind by the killed process


# -- payouts: a deliverer killed right after the receiver's 200 -------------------------------
class KillingReceiver(Receiver):
    """Stops the deliverer process (SIGSTOP) before it answers the ``kill_at``-th accepted
    request with 200, answers, then kills it (SIGKILL): the answer reached the deliverer's
    socket, and the deliverer never got to record it."""

    def __init__(self) -> None:
        super().__init__()
        self.victim: subprocess.Popen | None = None
        self.kill_at = 0
        self.answered = 0

    def _answer(self, h, status: int, body: bytes, headers: dict | None = None) -> None:
        victim = None
        if 200 <= status < 300:
            with self.lock:
                self.answered += 1
                victim = self.victim if self.answered == self.kill_at else None
        if victim is not None:
            os.kill(victim.pid, signal.SIGSTOP)
        Receiver._answer(h, status, body, headers)
        if victim is not None:
            os.kill(victim.pid, signal.SIGKILL)


def test_payout_deliverer_killed_after_the_receivers_200_resends_under_the_same_key(tmp_path):
    path = tmp_path / "wuma-data"
    with DataFolder.init(path) as data:
        admin = Admin(data)
        seqs = [test_payouts.add(data.store, admin.ledger, amount=100 + i) for i in range(3)]
        keys = [test_payouts.key_of(admin.ledger, s) for s in seqs]
    rec = KillingReceiver()
    try:
        rec.kill_at = 2
        rec.victim = subprocess.Popen(
            [sys.executable, "-m", "cli", "--data", str(path), "payout", "deliver", "--url", rec.url,
             "--once"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "WUMA_PAYOUT_SECRET": SECRET},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert rec.victim.wait(60) == -signal.SIGKILL
        with DataFolder(path) as data:
            payouts = Admin(data).payouts
            first, second, third = (payouts.state(s) for s in seqs)
            assert first["state"] == "paid"
            # acknowledged by the receiver, not recorded: still leased, counted as sent
            assert (second["state"], second["attempts"]) == ("pending", 1)
            assert second["leased_until"] > time.time()
            assert (third["state"], third["attempts"]) == ("pending", 1)  # leased, never sent
            assert payouts.deliver_once(rec.url, SECRET)["sent"] == 0  # the lease holds
            r = payouts.deliver_once(rec.url, SECRET, now=second["leased_until"] + 1)
            assert (r["sent"], r["paid"]) == (2, 2)
            assert [payouts.state(s)["state"] for s in seqs] == ["paid"] * 3
    finally:
        rec.close()
    assert rec.keys() == [keys[0], keys[1], keys[1], keys[2]]  # the one in flight, twice
    copies = [r["raw"] for r in rec.requests if r["key"] == keys[1]]
    assert copies[0] == copies[1]  # the same body bytes under the same key
    assert sorted(rec.accepted) == sorted(keys)  # the receiver paid each entry once


# -- the whole server killed under mixed writes --------------------------------------------------
def _world(path: Path) -> tuple[list[str], str, str]:
    w = build_world(path, rate_per_minute=10**7)
    data = w["data"]
    caps = data.create_batch("cap", 3000)
    w["agg"].activate(sku="SKU-1", name="Green tea", lot="L9", production_date="2026-11-01", batch=caps.id)
    admin = Admin(data)
    admin_token = admin.tokens.add("crash-admin", "admin", who="test")[1]
    admin.pools.create("p", total=10**8, who="test")
    now = time.time()
    window = {"start": now - 60, "end": now + 86400}
    trigger = {"code_role": "cap_inner", "actor_role": "consumer"}
    admin.campaigns.create({"name": "Swap", "pool": "p", "trigger": trigger, "target": {"batches": [caps.id]},
                            "window": window, "regions": ["4401"],
                            "reward": {"kind": "fixed", "amount": 100, "payout": "voucher", "valid_days": 30}},
                           who="test")
    admin.campaigns.create({"name": "Draw", "pool": "p", "trigger": trigger, "target": {"batches": [caps.id]},
                            "window": window, "regions": ["4501"],
                            "reward": {"kind": "draw", "tiers": [{"amount": 50, "odds": 0.6},
                                                                 {"amount": 0, "odds": 0.4}]},
                            "lock": {"kind": "repurchase", "days": 30}}, who="test")
    codes = [data.codes.code(caps, i, "cap_inner") for i in range(caps.count)]
    admin.close()
    data.close()
    return codes, admin_token, w["store_token"]


def test_server_killed_under_mixed_writes_keeps_every_acknowledged_write(tmp_path):
    path = tmp_path / "wuma-data"
    codes, admin_token, store_token = _world(path)
    rng = random.Random(5)
    lock = threading.Lock()
    todo = iter(range(len(codes)))
    acked: dict[str, list] = {"rewards": [], "redeems": [], "reversals": [], "top_ups": []}
    vouchers: list[str] = []
    as_admin = {"Authorization": f"Bearer {admin_token}"}
    as_store = {"Authorization": f"Bearer {store_token}"}

    def client(server: Server, stop: threading.Event, seed: int) -> None:
        pick = random.Random(seed)
        conn = None
        while not stop.is_set():
            try:
                conn = conn or server.conn()
                r = pick.random()
                if r < 0.6:
                    with lock:
                        i = next(todo, None)
                    if i is None:
                        return
                    region = "440106" if i % 2 else "450102"
                    status, body = server.scan({"code": codes[i], "actor": {"role": "consumer", "id": f"u{i % 11}"},
                                                "location": {"region": region}}, conn=conn)
                    if status == 200:
                        with lock:
                            acked["rewards"] += [x for x in body["rewards"] if "ledger" in x]
                            vouchers.extend(x["voucher"] for x in body["rewards"] if x["outcome"] == "voucher")
                elif r < 0.8:
                    with lock:
                        v = vouchers.pop(pick.randrange(len(vouchers))) if vouchers else None
                    if v is not None:
                        status, body = server.request("POST", "/v1/vouchers/redeem", {"voucher": v}, as_store,
                                                      conn=conn)
                        if status == 200:
                            with lock:
                                acked["redeems"].append((v, body["ledger"]))
                elif r < 0.9:
                    with lock:
                        grants = [x["ledger"] for x in acked["rewards"] if x["outcome"] == "unlocked"]
                    if grants:
                        seq = pick.choice(grants)
                        status, body = server.request("POST", f"/admin/api/ledger/{seq}/reverse",
                                                      {"reason": "test"}, as_admin, conn=conn)
                        if status == 200:
                            with lock:
                                acked["reversals"].append((seq, body["seq"]))
                else:
                    status, body = server.request("POST", "/admin/api/pools/p/top-up", {"amount": 7}, as_admin,
                                                  conn=conn)
                    if status == 200:
                        with lock:
                            acked["top_ups"].append(body["total"])
            except (OSError, ValueError, http.client.HTTPException):  # killed under this request
                conn = None
                time.sleep(0.01)

    for k in range(2):
        server = Server(path)
        stop = threading.Event()
        clients = [threading.Thread(target=client, args=(server, stop, 10 * k + i)) for i in range(8)]
        for t in clients:
            t.start()
        time.sleep(rng.uniform(1.0, 2.0))
        server.kill9()  # the whole process group: master and both workers
        stop.set()
        for t in clients:
            t.join(30)
    assert all(len(v) > 3 for v in acked.values()), {k: len(v) for k, v in acked.items()}

    with DataFolder(path) as data:
        admin = Admin(data)
        ledger = {e["seq"]: e for e in admin.ledger.entries(limit=100_000)}
        for r in acked["rewards"]:  # every reward answered to a consumer is in the ledger
            assert ledger[r["ledger"]]["amount"] == r["amount"], r
        reversed_ = {e["ref"] for e in ledger.values() if e["kind"] == "reversal"}
        for v, seq in acked["redeems"]:  # redeemed for good, and the store's credit recorded
            assert (ledger[seq]["kind"], ledger[seq]["voucher"]) == ("redeem", v)
            assert admin.rewards.voucher(v)["state"] == "redeemed"
        audited = {a["target"] for a in admin.audit.entries(limit=100_000) if a["action"] == "ledger.reverse"}
        for seq, rseq in acked["reversals"]:  # with its audit entry, and its payout cancelled
            assert ledger[rseq]["ref"] == seq and str(seq) in audited
            assert admin.payouts.state(seq)["state"] == "cancelled"
        top_ups = [a for a in admin.audit.entries(limit=100_000) if a["action"] == "pool.top_up"]
        pool = admin.pools.status("p")
        assert pool["total"] == 10**8 + 7 * len(top_ups) >= max(acked["top_ups"])
        # the pool's spend is the ledger's: charges less the budget given back
        charged = sum(e["amount"] for e in ledger.values() if e["kind"] in ("grant", "locked", "voucher"))
        returned = sum(e["amount"] for e in ledger.values() if e["kind"] == "expire"
                       or e["kind"] == "reversal" and ledger[e["ref"]]["kind"] in ("grant", "unlock"))
        assert pool["spent"] == charged - returned
        # every voucher is redeemed exactly when one redemption of it stands
        standing: dict[str, int] = {}
        for e in ledger.values():
            if e["kind"] == "redeem" and e["seq"] not in reversed_:
                standing[e["voucher"]] = standing.get(e["voucher"], 0) + 1
        for e in ledger.values():
            if e["kind"] == "voucher":
                redeemed = admin.rewards.voucher(e["voucher"])["state"] == "redeemed"
                assert standing.get(e["voucher"], 0) == int(redeemed), e


# -- a relaxed data folder: the writes that let something leave the store are forced to disk ----
class SyncSpy:
    """Stands in for a store's LMDB environment and notes, at each forced sync, what
    ``probe()`` reads then (in a new read transaction: what is committed)."""

    def __init__(self, env, probe) -> None:
        self._env, self._probe = env, probe
        self.seen: list = []

    def __getattr__(self, name):
        return getattr(self._env, name)

    def sync(self, force: bool = False):
        self.seen.append(self._probe())
        return self._env.sync(force)


@pytest.fixture(params=["relaxed", "strict"])
def voucher_world(tmp_path, request):
    path = tmp_path / "wuma-data"
    w = build_world(path, rate_per_minute=100_000)
    w["data"].update_config(store={"durability": request.param})
    w["data"].close()
    data = DataFolder(path)
    admin = Admin(data, rng=random.Random(7), clock=Clock())
    admin.pools.create("p", total=10_000, who="test")
    admin.campaigns.create({
        "name": "Swap", "pool": "p", "trigger": {"code_role": "cap_inner", "actor_role": "consumer"},
        "target": {"batches": [w["caps"].id]}, "window": {"start": T0 - 3600, "end": T0 + 86400},
        "reward": {"kind": "fixed", "amount": 500, "payout": "voucher", "valid_days": 7}}, who="test")
    pipe = admin.scan_pipeline()
    code = data.codes.code(w["caps"], 0, "cap_inner")
    voucher = pipe.scan(ScanRequest(code, actor_id="u1", region="440106")).rewards[0]["voucher"]
    yield {"data": data, "admin": admin, "voucher": voucher, "store": data.accounts.get("s-1"),
           "relaxed": request.param == "relaxed"}
    admin.close()
    data.close()


def _spy(data, probe) -> SyncSpy:
    spy = data.store.env = SyncSpy(data.store.env, probe)
    return spy


def test_voucher_redemption_and_reversal_are_on_disk_when_acknowledged(voucher_world):
    """With durability relaxed a power loss may undo the last commit: a redemption (the
    store hands the goods over on its answer) would be undone and the voucher redeemable
    again; a reversal undone would let the deliverer send the payout it cancelled."""
    w = voucher_world
    admin, v = w["admin"], w["voucher"]
    spy = _spy(w["data"], lambda: (admin.rewards.voucher(v)["state"], admin.ledger.last_seq()))
    redeemed = admin.rewards.redeem(v, w["store"], now=T0 + 100)
    seq = redeemed["redeem_ledger"]
    admin.reverse(seq, reason="wrong store", who="test", now=T0 + 200)
    if not w["relaxed"]:
        assert spy.seen == []  # strict: every commit is on disk already, nothing more to do
        return
    assert spy.seen == [("redeemed", seq), ("issued", seq + 1)]  # each forced once committed


def test_payout_lease_is_on_disk_before_the_request_goes_out(voucher_world, receiver):
    """A lease undone by a power loss (relaxed) would make an entry the payment system has
    look never sent: a reversal could then cancel it, and its budget go back."""
    w = voucher_world
    admin = w["admin"]
    seq = admin.rewards.redeem(w["voucher"], w["store"], now=T0 + 100)["redeem_ledger"]
    spy = _spy(w["data"], lambda: (admin.payouts.state(seq)["attempts"], len(receiver.requests)))
    assert admin.payouts.deliver_once(receiver.url, SECRET)["paid"] == 1
    assert spy.seen == ([(1, 0)] if w["relaxed"] else [])  # leased, on disk, nothing sent yet


def test_pack_registration_is_on_disk_before_a_file_is_placed(pack_world, tmp_path):
    root, _keys, _brand = pack_world
    with DataFolder(root / "wuma-data") as data:
        data.update_config(store={"durability": "relaxed"})
    out = tmp_path / "packs"
    with DataFolder(root / "wuma-data") as data:
        reg = PackRegistry(data)
        spy = _spy(data, lambda: (len(reg.list()), sorted(p.name for p in out.iterdir())))
        packs = reg.export(1, "L1", out, parts=2, chunk_bytes=8192)
    assert spy.seen == [(2, [])]
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(p.path).name for p in packs)


def test_batch_create_and_campaign_pause_are_on_disk_when_acknowledged(voucher_world):
    """Relaxed: a batch undone by a power loss after its codes were exported would give the
    next batch its id, so its codes; a pause undone would pay again."""
    w = voucher_world
    data, admin = w["data"], w["admin"]
    (campaign,) = admin.campaigns.list()
    spy = _spy(data, lambda: (len(data.batches.list()), admin.campaigns.get(campaign.id).status))
    before = len(data.batches.list())
    data.create_batch("cap", 10)
    admin.campaigns.pause(campaign.id, who="test")
    assert spy.seen == ([(before + 1, "active"), (before + 1, "paused")] if w["relaxed"] else [])



def test_token_revocations_and_reissues_are_on_disk_when_acknowledged(voucher_world):
    """Relaxed: a revocation or a reissue undone by a power loss would bring back a token
    taken away because it leaked."""
    w = voucher_world
    data, admin = w["data"], w["admin"]
    _, ops = admin.tokens.add("ops", "operator", who="test")
    held = {"ops": ops, "s-1": data.accounts.reissue("s-1")[1]}
    spy = _spy(data, lambda: sorted(name for name, token in held.items()
                                    if (admin.tokens if name == "ops" else data.accounts).authenticate(token)))
    # NOTE: each sync probes the tokens held before the call: a reissue's sees the old
    # token dead already, a revocation's the revoked one
    held["s-1"] = data.accounts.reissue("s-1")[1]
    data.accounts.revoke("s-1")
    held["ops"] = admin.tokens.reissue("ops", who="test")[1]
    admin.tokens.revoke("ops", who="test")
    assert spy.seen == ([["ops"], ["ops"], [], []] if w["relaxed"] else [])


# -- engine/keys.py (engine.files.write_new_file) --------------------------------------------------------------
_ROTATE = r'''
import os, signal, sys
from pathlib import Path
write = os.write
def write_key(fd, data):  # killed once the key file exists, before its 32 bytes are in it
    if len(data) == 32:
        os.kill(os.getpid(), signal.SIGKILL)
    return write(fd, data)
os.write = write_key
from engine import DataFolder
with DataFolder(Path(sys.argv[1])) as data:
    data.rotate_key()
'''


def test_key_rotate_killed_midway_leaves_the_folder_usable(tmp_path):
    DataFolder.init(tmp_path / "wuma-data").close()
    got = _child(_ROTATE, tmp_path / "wuma-data")
    assert got.returncode == -signal.SIGKILL
    assert not list((tmp_path / "wuma-data" / "keys").glob("master-v2*"))
    with DataFolder(tmp_path / "wuma-data") as data:  # it raised "master-v2.key is damaged"
        assert data.rotate_key() == 2


# -- a process killed inside a read transaction ---------------------------------------------
_READ_THEN_DIE = """
import os, signal, sys
from engine.store import Store
store = Store(sys.argv[1])
txn = store.read()
txn.get(b"x")
print(os.getpid(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _reader_pids(store) -> set[int]:
    return {int(line.split()[0]) for line in store.env.readers().splitlines()[1:] if line.strip()}


def test_a_reader_killed_in_its_transaction_is_freed_and_its_snapshot_no_longer_pinned(tmp_path):
    """A worker killed inside a read (the OOM killer) left its reader slot taken while the
    other worker kept the store open: its snapshot pinned, every later commit's freed pages
    could not be used again and data.mdb grew with every scan. The next open frees the
    slot (a replacement worker opens its stores), and so does a server's periodic check."""
    from engine.store import Store

    store = Store(tmp_path / "db", map_size=1 << 30)  # this process: the worker that lives on
    db = store.db("t")
    with store.write() as txn:
        txn.put(b"x", b"0" * 2000, db=db)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    run = subprocess.run([sys.executable, "-c", _READ_THEN_DIE, str(tmp_path / "db")],
                         env=env, capture_output=True, text=True, timeout=60)
    dead = int(run.stdout.split()[0])
    assert run.returncode == -signal.SIGKILL and dead in _reader_pids(store)

    def growth(writes: int) -> int:
        before = store.env.info()["last_pgno"]
        for i in range(writes):
            with store.write() as txn:
                txn.put(b"x", str(i).encode() * 1000, db=db)
        return store.env.info()["last_pgno"] - before

    pinned = growth(200)  # every commit's pages are new: the dead snapshot pins the old ones
    assert store.clear_dead_readers() == 1 and dead not in _reader_pids(store)
    assert growth(200) < pinned / 10, pinned  # freed pages are used again
    # the next open frees such a slot by itself (a worker replacing the killed one)
    run = subprocess.run([sys.executable, "-c", _READ_THEN_DIE, str(tmp_path / "db")],
                         env=env, capture_output=True, text=True, timeout=60)
    dead = int(run.stdout.split()[0])
    assert dead in _reader_pids(store)
    subprocess.run([sys.executable, "-c", "import sys\nfrom engine.store import Store\nStore(sys.argv[1])",
                    str(tmp_path / "db")], env=env, check=True, timeout=60)
    assert dead not in _reader_pids(store)
    # and a server worker, which keeps its stores open for days, frees them from time to time
    from engine.store import clear_dead_readers_every

    run = subprocess.run([sys.executable, "-c", _READ_THEN_DIE, str(tmp_path / "db")],
                         env=env, capture_output=True, text=True, timeout=60)
    dead = int(run.stdout.split()[0])
    assert dead in _reader_pids(store)
    clear_dead_readers_every([store], seconds=0.1)
    deadline = time.monotonic() + 10
    while dead in _reader_pids(store) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dead not in _reader_pids(store)
    store.env.close()

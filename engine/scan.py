"""The scan pipeline: one scan in, a verdict out. No HTTP in here.

Order (each step can end the scan)::

    abuse checks (ban, rate) -> actor authentication -> decode + FF1 decrypt + tag
    -> unit state (voided / activated) and what it is (product, ancestors, distributor)
    -> role rules and diversion -> campaign hooks -> durable scan record -> verdict

Verdicts: ``genuine``; ``inactive`` (a real code not yet activated: answered as not
valid, recorded as evidence); ``voided``; ``invalid`` (forged or malformed — the same
answer for both). Invalid codes count towards the caller's enumeration ban.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

from engine.abuse import SUBJECT_ID_BYTES, AbuseGuard, subject
from engine.accounts import ACCOUNT_ROLES, ACTOR_ROLES, AccountRegistry
from engine.aggregation import Aggregation, unit_id
from engine.codes import CodeEngine
from engine.errors import Banned, RateLimited, Unauthorized
from engine.ids import has_control, is_region_code, region_prefix
from engine.regions import RegionTable
from engine.scanlog import ScanLog, ScanRecord

__all__ = ["ScanRequest", "ScanResult", "ScanPipeline", "ScanContext", "DEFAULT_ROLE_RULES",
           "VERDICTS", "code_verdict"]

VERDICTS = ("genuine", "inactive", "voided", "invalid")
#: Which code roles each actor role is meant to scan. Any other pair is still verified
#: and recorded, but flagged ``role_not_allowed`` and earns nothing.
DEFAULT_ROLE_RULES: dict[str, frozenset] = {
    "consumer": frozenset({"cap_inner"}),
    "store": frozenset({"case_inner", "cap_outer", "case", "box"}),
    "shop_assistant": frozenset({"cap_outer", "box"}),
    "distributor": frozenset({"pallet", "case_outer", "case", "cap_outer"}),
    "sales_rep": frozenset({"pallet", "case_outer", "case", "cap_outer"}),
}
_MAX_ID = 128
#: ... and at most this many bytes in UTF-8: an id becomes part of database keys (a ban's
#: subject, a campaign's per-actor count), which LMDB caps at 511 bytes. 128 Chinese
#: characters (3 bytes each) fit; 128 emoji (4 bytes) do not.
_MAX_ID_BYTES = SUBJECT_ID_BYTES
#: Account roles that scan at one place, their account's registered region (门店, 仓库): a
#: scan of theirs without a location is taken there.
_FIXED_PLACE_ROLES = frozenset({"store", "shop_assistant", "distributor"})


class ScanRequest(NamedTuple):
    """One scan as the front end sends it. Validated by :meth:`validate`.
    (A NamedTuple: immutable and cheap to build, once per request.)"""

    code: str
    actor_role: str = "consumer"
    actor_id: str | None = None  # consumer: the front end's user id
    token: str | None = None  # bearer token for account roles
    region: str | None = None
    lat: float | None = None
    lng: float | None = None
    device: str | None = None
    ip: str | None = None

    def validate(self) -> None:
        """ValueError with a message a person can act on."""
        _check_code(self.code)
        if self.actor_role not in ACTOR_ROLES:
            raise ValueError(f"actor role must be one of {', '.join(ACTOR_ROLES)}")
        region = self.region
        if region is not None and not is_region_code(region):
            raise ValueError("region must be an administrative division code such as 440106")
        # PERF: the usual request has no position: one check instead of two loops
        if self.lat is not None or self.lng is not None:
            if self.lat is None or self.lng is None:
                raise ValueError("lat and lng must be given together (a position), or neither")
            for name, v, lo, hi in (("lat", self.lat, -90, 90), ("lng", self.lng, -180, 180)):
                # NOTE: the range check refuses NaN and the infinities too; math.isfinite
                # would raise OverflowError on an integer too large for a float
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                      or not lo <= v <= hi):
                    raise ValueError(f"{name} must be a number between {lo} and {hi}")
        for name, v in (("actor_id", self.actor_id), ("device", self.device), ("ip", self.ip)):
            if v is None:
                continue
            # PERF: isascii() is a flag check; ASCII text (the usual id) is checked for
            # control characters by isprintable(), other text is encoded to count its bytes
            if not isinstance(v, str) or len(v) > _MAX_ID or (
                    not v.isascii() and len(_text(v, name)) > _MAX_ID_BYTES):
                raise ValueError(f"{name} must be a string of at most {_MAX_ID} characters "
                                 f"({_MAX_ID_BYTES} bytes in UTF-8)")
            if not v.isprintable() and has_control(v):
                raise ValueError(f"{name} must be printable text: it holds a control character "
                                 "(a line break, tab, escape, bidirectional control ...), which "
                                 "would reshape listings and exports of it")


def _holds(region: str, inner: str) -> bool:
    """Is division ``region`` a coarser one holding division ``inner`` (44 or 440000 holds
    440305)? Compared by whole levels (:func:`engine.ids.region_prefix`)."""
    outer, inner = region_prefix(region), region_prefix(inner)
    return outer != inner and inner.startswith(outer)


def _check_code(code) -> None:
    """ValueError unless ``code`` is text (a scan's, a check's)."""
    if not isinstance(code, str):
        raise ValueError("code must be a string (the printed code or its URL)")
    if not code.isascii():
        _text(code, "code")


def _text(value: str, name: str) -> bytes:
    """``value`` in UTF-8, or ValueError: JSON can carry a lone surrogate (``"\\ud800"``),
    which is no text and cannot be stored; refused before any step (an invalid code's
    evidence must always store, or it would escape the enumeration count)."""
    try:
        return value.encode()
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} must be Unicode text; it holds a lone surrogate "
                         f"(\\u{ord(value[e.start]):04x} at character {e.start + 1})") from None


@dataclass
class ScanContext:
    """What a campaign hook sees (a genuine scan, before its durable write). ``trace`` is
    :meth:`engine.aggregation.Aggregation.scan_trace` of the unit."""

    request: ScanRequest
    account_id: str | None
    verdict: str
    code_role: str | None
    unit: int | None
    trace: dict | None
    flags: list[str]
    at: float


#: How answers become JSON: UTF-8 text, no ASCII escapes. One encoder, reused (PERF:
#: ``json.dumps`` builds a new one per call).
JSON_ENCODER = json.JSONEncoder(ensure_ascii=False)
_ENCODE = JSON_ENCODER.encode
_ESCAPE = json.encoder.encode_basestring  # the C escaper JSON_ENCODER uses


def _string(v) -> str:
    return _ESCAPE(v) if v.__class__ is str else _ENCODE(v)


def _number(v) -> str:
    # NOTE: json writes ints and floats with their repr; bools, None and the rest go to it
    return v.__repr__() if v.__class__ is int or v.__class__ is float and math.isfinite(v) else _ENCODE(v)


def _strings(items) -> str:
    if not items:
        return "[]"
    if all(v.__class__ is str for v in items):
        return "[" + ", ".join(map(_ESCAPE, items)) + "]"
    return _ENCODE(list(items))


def _flat(d) -> str:
    """A dict of string keys and string-or-None values (a product), else the encoder's.
    PERF: a product is the same for a whole batch; its text is kept (bounded) by content."""
    if d.__class__ is not dict:
        return _ENCODE(d)
    key = (*d, *d.values())
    try:
        return _FLAT_SEEN[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable value
        return _ENCODE(d)
    out = []
    for k, v in d.items():
        if k.__class__ is not str or not (v is None or v.__class__ is str):
            return _ENCODE(d)
        out.append(f"{_ESCAPE(k)}: {'null' if v is None else _ESCAPE(v)}")
    if len(_FLAT_SEEN) >= 4096:
        _FLAT_SEEN.clear()
    text = _FLAT_SEEN[key] = "{" + ", ".join(out) + "}"
    return text


_FLAT_SEEN: dict[tuple, str] = {}


def _ancestors(items) -> str:
    out = []
    for a in items:
        if a.__class__ is dict and tuple(a) == _ANCESTOR_KEYS:
            level, batch, serial = a.values()
            if level.__class__ is str and batch.__class__ is int and serial.__class__ is int:
                out.append('{"level": %s, "batch": %d, "serial": %d}' % (_ESCAPE(level), batch, serial))
                continue
        return _ENCODE(list(items))
    return "[" + ", ".join(out) + "]"


_ANCESTOR_KEYS = ("level", "batch", "serial")


#: Verdicts answered with the verdict alone (see :meth:`ScanResult.to_dict`).
_VERDICT_ONLY = frozenset({"invalid", "inactive"})


class ScanResult(NamedTuple):
    """The answer to a scan. PERF: a NamedTuple (immutable, ~0.7 µs to build; a frozen
    dataclass took ~2.8 µs for these 13 fields, on every scan)."""

    verdict: str
    code: str | None = None
    role: str | None = None
    level: str | None = None
    batch: int | None = None
    serial: int | None = None
    product: dict | None = None
    ancestors: list | tuple = ()
    distributor: str | None = None
    scan: ScanRecord | None = None
    flags: tuple = ()
    diversion: dict | None = None
    rewards: tuple = ()

    def to_dict(self) -> dict:
        """The answer a caller gets. APPSEC: an invalid or an inactive code gets its verdict
        alone. A code not yet activated is answered as not valid (its scan is recorded, as
        evidence if a pack leaked): whoever holds leaked or overrun labels learns nothing
        of them before they carry a product (which is an outer or an inner code, whether
        another scanned it)."""
        if self.verdict in _VERDICT_ONLY:
            return {"verdict": self.verdict}
        d = {"verdict": self.verdict, "code": self.code, "role": self.role, "level": self.level,
             "flags": list(self.flags)}
        if self.verdict == "genuine":
            d.update(batch=self.batch, serial=self.serial, product=self.product,
                     ancestors=list(self.ancestors), distributor=self.distributor,
                     diversion=self.diversion, rewards=list(self.rewards))
        if self.scan is not None:
            d["scan"] = {"count": self.scan.count, "first_at": self.scan.first_at,
                         "first_region": self.scan.first_region, "last_at": self.scan.last_at}
        return d

    def to_json(self) -> bytes:
        """:meth:`to_dict` as UTF-8 JSON, byte for byte what ``JSON_ENCODER`` makes of it.

        PERF: written out field by field, strings through json's C escaper: a genuine
        answer took 8.0 µs as ``JSON_ENCODER.encode(to_dict())`` and takes 4.7 µs this way
        (most of what is left is the two times' float repr, which the encoder pays too).
        Values of a shape this does not know (campaign rewards, a diversion) go through
        the encoder."""
        answer = _VERDICT_ONLY_JSON.get(self.verdict)
        if answer is not None:
            return answer
        head = (f'{{"verdict": {_string(self.verdict)}, "code": {_string(self.code)}, '
                f'"role": {_string(self.role)}, "level": {_string(self.level)}, '
                f'"flags": {_strings(self.flags)}')
        parts = [head]
        if self.verdict == "genuine":
            parts.append(f', "batch": {_number(self.batch)}, "serial": {_number(self.serial)}, '
                         f'"product": {_flat(self.product)}, "ancestors": {_ancestors(self.ancestors)}, '
                         f'"distributor": {_string(self.distributor)}, '
                         f'"diversion": {"null" if self.diversion is None else _ENCODE(self.diversion)}, '
                         f'"rewards": {_ENCODE(list(self.rewards)) if self.rewards else "[]"}')
        r = self.scan
        if r is not None:
            parts.append(f', "scan": {{"count": {_number(r.count)}, "first_at": {_number(r.first_at)}, '
                         f'"first_region": {_string(r.first_region)}, "last_at": {_number(r.last_at)}}}')
        parts.append("}")
        return "".join(parts).encode()


#: The answer for every invalid scan. PERF: built once (immutable; to_dict() of it is a
#: fresh dict).
_INVALID_RESULT = ScanResult("invalid")
#: Their answers, built once.
_VERDICT_ONLY_JSON = {v: JSON_ENCODER.encode(ScanResult(v).to_dict()).encode() for v in _VERDICT_ONLY}
#: The flags of a check of a code flagged copied.
_COPIED = ("copied",)

#: A campaign hook looks at a genuine scan (outside any transaction) and returns None, or a
#: ``settle(txn, seq, memo) -> list[dict]`` function that the scan log runs inside the scan's
#: durable write transaction; what it returns is stored in the event as ``rewards``. ``memo``
#: is the write transaction's memo (see :meth:`engine.scanlog.ScanLog.record`).
CampaignHook = Callable[[ScanContext], "Callable | None"]


def _chain(settles: list):
    if not settles:
        return None
    if len(settles) == 1:
        return settles[0]
    return lambda txn, seq, memo=None: [r for s in settles for r in s(txn, seq, memo)]


def _unit_verdict(trace: dict) -> str:
    return "voided" if trace["voided"] else "genuine" if trace["active"] else "inactive"


def code_verdict(codes: CodeEngine, aggregation: Aggregation, text: str) -> tuple[str, object]:
    """``(verdict, verification)`` of a code as the scan API would answer it (genuine,
    inactive, voided, invalid), read-only: nothing recorded, no abuse control (for
    operators, ``wuma code verify``)."""
    v = codes.verify(text)
    if not v.genuine:
        return "invalid", v
    _, _, _, v, trace = _label_trace(codes, aggregation, v)
    return _unit_verdict(trace), v


def _label_trace(codes: CodeEngine, aggregation: Aggregation, v):
    """``(role index, printed uid, unit, verification, trace)`` of a genuine code's
    verification ``v``: the printed uid is the label's own, the unit the one it stands for
    (:meth:`Aggregation.scan_label`), and the verification is answered as that unit's
    (the code and role stay the label's: see :func:`_as_unit`)."""
    role_index = codes.spec.role(v.role).index
    printed = unit_id(v.batch, v.serial)
    uid, trace = aggregation.scan_label(printed, role_index)
    return role_index, printed, uid, (v if uid == printed else _as_unit(v, uid)), trace


def _as_unit(v, uid: int):
    """The verification ``v`` of a replacement label (标签替换) answered as the unit's it
    stands for: its batch and serial (the code and role stay the label's)."""
    return v._replace(batch=uid >> 32, serial=uid & 0xFFFFFFFF)


def _result(verdict: str, v, trace: dict, record: ScanRecord | None, flags: tuple = (),
            diversion: dict | None = None, rewards: tuple = ()) -> ScanResult:
    """The answer for a genuine code (any unit state), from its verification and trace.
    (PERF: built by position; with keywords this NamedTuple took 0.61 vs 0.35 µs.)"""
    dist = trace["distributor"]
    return ScanResult(verdict, v.code, v.role, v.level, v.batch, v.serial, trace["product"],
                      trace["ancestors"], dist["id"] if dist else None, record, flags, diversion,
                      rewards)


def _copy_threshold(i: int) -> property:
    """One of a pipeline's copied-flag thresholds, kept in its ``_copy_at`` tuple."""
    def get(self):
        return self._copy_at[i]

    def set_(self, value) -> None:
        self._copy_at = (*self._copy_at[:i], value, *self._copy_at[i + 1:])

    return property(get, set_)


class ScanPipeline:
    """Wires the stores together; one per process (each gunicorn worker has its own)."""

    def __init__(self, codes: CodeEngine, aggregation: Aggregation, scans: ScanLog,
                 abuse: AbuseGuard, accounts: AccountRegistry, *,
                 role_rules: dict[str, frozenset] | None = None,
                 hooks: list[CampaignHook] | None = None,
                 regions: RegionTable | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.codes = codes
        self.aggregation = aggregation
        self.scans = scans
        self.abuse = abuse
        self.accounts = accounts
        self.role_rules = role_rules or DEFAULT_ROLE_RULES
        # a code copied onto many packs: the "abuse" settings. NOTE: read once, as the rest
        # of the settings (a running server keeps what it read)
        limits = abuse.limits
        self._copy_at = (limits.copy_regions, limits.copy_devices, limits.copy_window_s)
        self.hooks = list(hooks or [])
        self.regions = regions
        self.clock = clock
        # PERF: every scan verifies one code; compiled FF1 rounds (~5.6 -> ~1.6 µs).
        codes.use_native_ff1()

    # PERF: the scan log takes the thresholds as one tuple, built once here (and again when
    # one is set), not on every scan and check
    copy_regions = _copy_threshold(0)
    copy_devices = _copy_threshold(1)
    copy_window_s = _copy_threshold(2)

    def _subjects(self, req: ScanRequest) -> list[str]:
        out = []
        if req.ip:
            out.append(subject("ip", req.ip))
        if req.device:
            out.append(subject("device", req.device))
        return out

    def _admit(self, subjects: list[str], now: float) -> None:
        """Banned or RateLimited for the first subject banned or over its rate."""
        ban = self.abuse.banned(subjects, now)
        if ban is not None:
            raise Banned(ban.subject, ban.expires_at)
        if self.abuse.over_rate(subjects, now):
            raise RateLimited(60 - int(now) % 60)

    def scan(self, req: ScanRequest) -> ScanResult:
        """Run one scan through the pipeline; raises Banned, RateLimited, Unauthorized,
        ValueError (bad request); every other outcome is a verdict."""
        req.validate()
        now = self.clock()
        subjects = self._subjects(req)
        account_id = account_region = None
        needs_account = req.actor_role in ACCOUNT_ROLES
        if needs_account:
            account = self.accounts.authenticate(req.token)
            if account is not None and account.role == req.actor_role:
                account_id, account_region = account.id, account.region
                subjects.append(subject("account", account_id))
        # NOTE: the client is admitted (ban, rate) before a bad token is answered: a banned
        # client learns nothing of tokens. One ban read and one rate count for all subjects.
        self._admit(subjects, now)
        if needs_account and account_id is None:
            raise Unauthorized("a valid API token for this actor role is required")

        v = self.codes.verify(req.code)
        if not v.genuine:
            self.abuse.record_invalid(subjects, req.code, now)
            return _INVALID_RESULT
        role_index, printed, uid, v, trace = _label_trace(self.codes, self.aggregation, v)
        region_from = None
        if req.region is None:
            if req.lat is not None and req.lng is not None and self.regions is not None:
                region = self.regions.locate(req.lat, req.lng)
                if region is not None:  # diversion, campaigns and the record use it from here on
                    req, region_from = req._replace(region=region), "latlng"
            # NOTE: a store's (or its assistant's, a distributor's) scan without a place is
            # taken at the account's registered region: those accounts scan on their own
            # premises. Else a store could send no location and its diverted cases would
            # pay the distributor's rebate (窜货不返利). A sales rep moves about: not so.
            if req.region is None and account_region is not None and req.actor_role in _FIXED_PLACE_ROLES:
                req, region_from = req._replace(region=account_region), "account"
        elif (account_region is not None and req.actor_role in _FIXED_PLACE_ROLES
              and _holds(req.region, account_region)):
            # NOTE: a region coarser than the account's own and holding it (the province, 44,
            # for a Shenzhen store) says nothing new of where it scans, and a coarse region
            # is never judged outside a territory: the store would escape 窜货不返利
            req, region_from = req._replace(region=account_region), "account"
        flags: list[str] = []
        verdict = _unit_verdict(trace)
        if v.role not in self.role_rules.get(req.actor_role, ()):
            flags.append("role_not_allowed")
        diversion = None
        dist = trace["distributor"]
        if verdict == "genuine" and dist and req.region:
            if not self.aggregation.in_territory(dist, req.region):
                diversion = {"distributor": dist["id"], "territory": dist["territory"],
                             "region": req.region}
                flags.append("diverted")
        settles = []
        if verdict == "genuine" and self.hooks:
            ctx = ScanContext(req, account_id, verdict, v.role, uid, trace, flags, now)
            for hook in self.hooks:
                settle = hook(ctx)
                if settle is not None:
                    settles.append(settle)
        event = {"at": now, "verdict": verdict, "actor_role": req.actor_role,
                 "actor": account_id or req.actor_id, "region": req.region, "device": req.device,
                 "ip": req.ip, "flags": flags}
        if req.lat is not None and req.lng is not None:
            event["lat"], event["lng"] = req.lat, req.lng
        if region_from is not None:
            event["region_from"] = region_from
        if diversion:
            event["diverted"] = diversion
        if uid != printed:  # a replacement label (标签替换): the event says which label it was
            event["label"] = printed
            if not trace.get("unit_seen", True):  # no label of the unit scanned in this role before
                event["unit_first"] = True
        # NOTE: the record is the label's as printed, the event the unit's: a replacement
        # label has a scan history of its own (its count is not the unit's: see
        # admin.stats), and scans of the torn label it replaced (answered voided) never
        # make it copied
        record = self.scans.record(uid, role_index, event, _chain(settles),
                                   self._copy_at if verdict == "genuine" else None, printed)
        # The scanner sees its own rewards; rebates to the store/distributor stay in the event.
        rewards = [r for r in record.rewards if "rebate" not in r]
        if record.copied:
            flags.append("copied")
        return _result(verdict, v, trace, record, flags=tuple(flags), diversion=diversion,
                       rewards=tuple(rewards))

    def check(self, code: str, ip: str | None = None) -> ScanResult:
        """Read-only anti-counterfeit check (the landing page): nothing is recorded of the
        code. A genuine code flagged ``copied`` by any scan of it is answered with that
        flag (the scan record keeps it), however long ago; of the scans recorded before the
        record kept it (an older release), only the window ending at the latest is judged,
        by the thresholds now (see :meth:`engine.scanlog.ScanLog.get`). The client at
        ``ip`` is held to the same bans and rate as its scans, and an invalid code counts
        towards its enumeration ban (else the check would answer forged guesses without
        limit, banned clients included). Raises Banned, RateLimited, ValueError (not text)."""
        _check_code(code)
        subjects = self._subjects(ScanRequest(code, ip=ip))
        now = self.clock()
        if subjects:
            self._admit(subjects, now)
        v = self.codes.verify(code)
        if not v.genuine:
            if subjects:
                self.abuse.record_invalid(subjects, code, now)
            return _INVALID_RESULT
        role_index, printed, _, v, trace = _label_trace(self.codes, self.aggregation, v)
        verdict = _unit_verdict(trace)
        record = self.scans.get(printed, role_index, self._copy_at)  # the label's own (see scan)
        # NOTE: copied once, the code stays so for the landing page (a scan's own flag
        # looks at its window only): a label seen in three cities is a copied label. Set
        # on genuine codes only, as for scans.
        flags = _COPIED if verdict == "genuine" and record is not None and record.ever_copied else ()
        return _result(verdict, v, trace, record, flags)

"""The small production run of conftest_world plus the admin layer: a token per admin role,
a budget pool, and campaigns on the cap batch (set up in process, before a server starts)."""

from __future__ import annotations

from conftest_world import build_world

from admin.service import Admin
from admin.tokens import ROLES

WHO = "cli:test"
#: Always open (times are China time).
WINDOW = {"start": "2020-01-01T00:00", "end": "2035-01-01T00:00"}


def consumer_rule(batch: int, *, name: str = "Cap draw", pool: str = "launch", **reward) -> dict:
    """A campaign paying consumers who scan the cap inner code (fixed 1 yuan by default)."""
    return {"name": name, "pool": pool, "trigger": {"code_role": "cap_inner", "actor_role": "consumer"},
            "target": {"batches": [batch]}, "window": WINDOW,
            "reward": reward or {"kind": "fixed", "amount": 100}}


def build_admin_world(path, **world_options) -> dict:
    """``build_world`` plus ``tokens`` ({role: token}) and a 1,000-yuan cash pool ``launch``.
    The data folder is left open (close ``w["data"]`` before starting a server)."""
    w = build_world(path, **world_options)
    admin = Admin(w["data"])
    w["tokens"] = {role: admin.tokens.add(f"{role}-1", role, who=WHO)[1] for role in ROLES}
    admin.pools.create("launch", total=100_000, name="Launch budget", who=WHO)
    w["admin"] = admin
    return w

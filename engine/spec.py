"""The packaging spec: which packaging levels exist and which code roles each carries.

Levels are ordered from the outside in (pallet first). A level has one role (a pallet
code) or a linked pair (outer + inner of the same unit, printed together and sharing
``(batch, serial)``). ``capacity`` is the most children a unit of that level may hold
in aggregation (0 for the innermost level).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

from engine.formats import FORMATS, CodeFormat

__all__ = ["Role", "Level", "PackagingSpec", "PRESETS", "load_preset"]

PRESETS = ("beverage", "baijiu")
_MAX_ROLES = 8  # 3 role bits in every format
#: The most children a unit may hold: no batch has more units (32 serial bits).
MAX_CAPACITY = 1 << 32


@dataclass(frozen=True)
class Role:
    name: str
    level: str
    index: int  # the value of the role field inside every code
    format: CodeFormat


@dataclass(frozen=True)
class Level:
    name: str
    depth: int  # 0 = outermost (pallet)
    capacity: int
    roles: tuple[str, ...]


class PackagingSpec:
    """Levels and roles, validated; built from a preset or a JSON document."""

    def __init__(self, name: str, levels: list[dict], description: str = "") -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("packaging spec needs a name")
        if not isinstance(description, str):
            raise TypeError("packaging spec description must be text")
        if not isinstance(levels, (list, tuple)) or not levels:
            raise ValueError("packaging spec needs at least one level (a list of levels)")
        self.name = name
        self.description = description
        self.levels: tuple[Level, ...] = ()
        self.roles: dict[str, Role] = {}
        lvls = []
        for depth, lv in enumerate(levels):
            if not isinstance(lv, dict):
                raise TypeError(f"level {depth}: must be an object with name, capacity and roles")
            lname = lv.get("name")
            if not isinstance(lname, str) or not lname.isidentifier():
                raise ValueError(f"level {depth}: name must be an identifier")
            if any(x.name == lname for x in lvls):
                raise ValueError(f"level {lname} appears twice")
            roles = lv.get("roles") or []
            if not isinstance(roles, list) or not 1 <= len(roles) <= 2:
                raise ValueError(f"level {lname}: needs one role or a linked pair (two), as a list")
            capacity = lv.get("capacity", 0)
            if not isinstance(capacity, int) or isinstance(capacity, bool):
                raise TypeError(f"level {lname}: capacity must be a whole number")
            if capacity < 0 or (depth < len(levels) - 1 and capacity == 0):
                raise ValueError(f"level {lname}: capacity must be > 0 (it holds children)")
            if capacity > MAX_CAPACITY:
                raise ValueError(f"level {lname}: capacity must be at most {MAX_CAPACITY:,} "
                                 "(the serials a batch may hold)")
            names = []
            for r in roles:
                if not isinstance(r, dict):
                    raise TypeError(f"level {lname}: each role must be an object with name and format")
                rname = r.get("name")
                if not isinstance(rname, str) or not rname.isidentifier():
                    raise ValueError(f"level {lname}: role name must be an identifier")
                if rname in self.roles:
                    raise ValueError(f"role {rname} appears twice")
                fmt = r.get("format", "base32")
                if not isinstance(fmt, str) or fmt not in FORMATS:
                    raise ValueError(f"role {rname}: unknown format {fmt!r} (known: {', '.join(FORMATS)})")
                if len(self.roles) >= _MAX_ROLES:
                    raise ValueError(f"at most {_MAX_ROLES} roles in a packaging spec")
                self.roles[rname] = Role(rname, lname, len(self.roles), FORMATS[fmt])
                names.append(rname)
            lvls.append(Level(lname, depth, capacity, tuple(names)))
        self.levels = tuple(lvls)
        self._by_level = {lv.name: lv for lv in self.levels}
        self._by_index = {r.index: r for r in self.roles.values()}

    # -- lookups ------------------------------------------------------------------------
    def level(self, name: str) -> Level:
        try:
            return self._by_level[name]
        except KeyError:
            raise ValueError(
                f"unknown level {name!r}; this spec ({self.name}) has: "
                + ", ".join(lv.name for lv in self.levels)
            ) from None

    def role(self, name: str) -> Role:
        try:
            return self.roles[name]
        except KeyError:
            raise ValueError(
                f"unknown role {name!r}; this spec ({self.name}) has: " + ", ".join(self.roles)
            ) from None

    def role_by_index(self, index: int) -> Role | None:
        return self._by_index.get(index)

    def parent_level(self, level: str) -> Level | None:
        d = self.level(level).depth
        return self.levels[d - 1] if d > 0 else None

    def child_level(self, level: str) -> Level | None:
        d = self.level(level).depth
        return self.levels[d + 1] if d + 1 < len(self.levels) else None

    @property
    def formats(self) -> dict[str, CodeFormat]:
        return {r.format.name: r.format for r in self.roles.values()}

    # -- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "levels": [
                {
                    "name": lv.name,
                    "capacity": lv.capacity,
                    "roles": [{"name": r, "format": self.roles[r].format.name} for r in lv.roles],
                }
                for lv in self.levels
            ],
        }

    @classmethod
    def from_dict(cls, doc: dict) -> "PackagingSpec":
        if not isinstance(doc, dict):
            raise ValueError("packaging spec must be a JSON object")
        levels = doc.get("levels") or []
        if not isinstance(levels, list):
            raise TypeError("packaging spec levels must be a list")
        return cls(doc.get("name", ""), levels, doc.get("description", ""))


def load_preset(name: str) -> PackagingSpec:
    if name not in PRESETS:
        raise ValueError(f"unknown packaging preset {name!r}; choose one of: {', '.join(PRESETS)}")
    text = resources.files("engine").joinpath("presets", f"{name}.json").read_text("utf-8")
    return PackagingSpec.from_dict(json.loads(text))

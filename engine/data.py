"""A Wuma data folder: configuration, keys and the LMDB store, opened together.

Layout::

    <data>/wuma.json      packaging spec, URL base, settings (no secrets)
    <data>/keys/          master-v<N>.key, mode 0600 (see engine.keys)
    <data>/db/            LMDB environment (data.mdb, lock.mdb); scan-commit.lock and
                          bulk-write.lock, whose flocks give scan committers and long
                          writes their turns (engine.scanlog)
    <data>/db-counters/   LMDB environment for rate counters (not synced: losable)
"""

from __future__ import annotations

import json
import os
import time
from functools import cached_property
from pathlib import Path

from engine.abuse import AbuseGuard, AbuseLimits
from engine.accounts import AccountRegistry

from engine.batches import Batch, BatchRegistry
from engine.codes import CodeEngine
from engine.errors import DataFolderError
from engine.formats import FORMATS, validate_url_base
from engine.keys import KeyRing
from engine.regions import RegionTable
from engine.spec import PackagingSpec, load_preset
from engine.store import Store

__all__ = ["DataFolder", "DEFAULT_URL_BASE", "DURABILITY", "default_data_path"]

DEFAULT_URL_BASE = "HTTPS://S.EXAMPLE.CN/Q/"
_CONFIG = "wuma.json"


#: Settings sections a brand may change after init.
_SETTINGS = {"abuse", "serve", "store"}
#: ``"store": {"durability": ...}``: when a write (a scan, a reward, an admin change) is
#: acknowledged. ``strict``: committed and on disk (data and meta pages fsynced).
#: ``relaxed``: committed and its data pages fsynced; a power loss or kernel crash may undo
#: the last commit (never corrupt the store); a crash of any process loses nothing.
DURABILITY = ("strict", "relaxed")


def _durability(config: dict) -> str:
    store = config.get("store", {})
    value = store.get("durability", "strict") if isinstance(store, dict) else None
    if value not in DURABILITY:
        raise DataFolderError(f'store durability must be one of {", ".join(DURABILITY)} '
                              f"(wuma.json, \"store\": {{\"durability\": ...}}); got {value!r}")
    return value


def _write_config(path: Path, config: dict) -> None:
    """Write wuma.json atomically (never a half-written file)."""
    tmp = path / (_CONFIG + ".tmp")
    tmp.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", "utf-8")
    os.replace(tmp, path / _CONFIG)


def default_data_path() -> Path:
    """``$WUMA_DATA``, else ``./wuma-data``."""
    return Path(os.environ.get("WUMA_DATA") or "wuma-data")


class DataFolder:
    """Everything one brand's Wuma installation keeps on disk."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        cfg = self.path / _CONFIG
        if not cfg.is_file():
            raise DataFolderError(f"{self.path} is not a Wuma data folder (no {_CONFIG}); run `wuma init`")
        try:
            self.config = json.loads(cfg.read_text("utf-8"))
            self.spec = PackagingSpec.from_dict(self.config["spec"])
        except (ValueError, KeyError) as e:
            raise DataFolderError(f"{cfg} is damaged: {e}") from None
        self.url_base: str = self.config.get("url_base", DEFAULT_URL_BASE)
        self.keys = KeyRing(self.path / "keys")
        self.durability = _durability(self.config)
        self.store = Store(self.path / "db", metasync=self.durability == "strict")
        self.batches = BatchRegistry(self.store, self.spec)
        self.codes = CodeEngine(self.spec, self.keys, self.batches)

    @classmethod
    def init(cls, path: Path, *, preset: str = "beverage", spec: PackagingSpec | None = None,
             url_base: str = DEFAULT_URL_BASE) -> "DataFolder":
        """Create a data folder with a fresh master key. Refuses an existing one."""
        path = Path(path)
        if (path / _CONFIG).exists():
            raise DataFolderError(f"{path} already holds a Wuma data folder")
        spec = spec or load_preset(preset)
        longest = max(f.length for f in FORMATS.values() if f.name in spec.formats)
        url_base = validate_url_base(url_base, longest)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        KeyRing.create(path / "keys")
        config = {"version": 1, "created_at": time.time(), "url_base": url_base, "spec": spec.to_dict()}
        _write_config(path, config)
        return cls(path)

    def update_config(self, **sections: dict) -> None:
        """Set settings sections (``abuse``, ``serve``, ``store``) in wuma.json; read by
        processes that open the folder afterwards (a running server keeps what it read)."""
        unknown = set(sections) - _SETTINGS
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        try:
            _durability(sections)
        except DataFolderError as e:
            raise ValueError(str(e)) from None
        self.config.update(sections)
        _write_config(self.path, self.config)

    @cached_property
    def accounts(self) -> AccountRegistry:
        """Scanning accounts (stores, distributors, sales reps, shop assistants)."""
        return AccountRegistry(self.store)

    @cached_property
    def abuse(self) -> AbuseGuard:
        """Rate limits and bans; counters in ``<data>/db-counters`` (not synced)."""
        return AbuseGuard(self.store, self.path / "db-counters", AbuseLimits(**self.config.get("abuse", {})))

    @cached_property
    def regions(self) -> RegionTable:
        """Division centres for lat/lng -> region (``wuma region import``)."""
        return RegionTable(self.store, **self.config.get("regions", {}))

    def create_batch(self, level: str, count: int, *, note: str = "") -> Batch:
        """Register a batch under the current key version (metadata only)."""
        return self.batches.create(level, count, self.keys.current, note=note)

    def rotate_key(self) -> int:
        """New master key version for new batches; printed codes stay valid."""
        version = self.keys.rotate()
        self.codes = CodeEngine(self.spec, self.keys, self.batches)
        return version

    def close(self) -> None:
        if "abuse" in self.__dict__:
            self.abuse.close()
        self.store.close()

    def __enter__(self) -> "DataFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

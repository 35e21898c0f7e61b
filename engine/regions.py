"""Where a scan happened, from its coordinates: lat/lng -> administrative division code.

A scan carries a region code (行政区划代码, e.g. ``440106``) and/or a position from the
phone. When only the position is given, diversion checks need the region: the
:class:`RegionTable` answers with the nearest known division centre within ``max_km``
(default 30 km), or None when nothing is that close.

The centres are data the operator loads (``wuma region import centres.csv``, columns
``code,lat,lng``, e.g. the county-level centres of the national division list): Wuma ships
no map. Without a table, positions are still recorded with the scan, and no region is
derived from them.

PERF: centres are bucketed into a 0.5° grid in memory; a lookup measures the distance
to the centres of the nine cells around the point only (a few dozen at county level).

NOTE: every gunicorn worker holds its own grid. Each change of the centres bumps a counter
in the store (in the same transaction), and a lookup reads it first: a ``wuma region
import`` counts in every running worker from its next scan, without a restart. PERF: one
LMDB read of ~1 µs, against ~14 µs for the lookup itself among 3,000 centres spread over
20° x 20° (timeit, a scratch script); only a scan with a position and no region code
looks up.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from engine.files import decode_text, read_bounded
from engine.ids import is_region_code
from engine.store import Store, pack, unpack

__all__ = ["RegionTable", "DEFAULT_MAX_KM", "MAX_IMPORT_BYTES"]

DEFAULT_MAX_KM = 30.0
#: The largest division-centre table :meth:`RegionTable.import_csv` reads: every
#: village-level centre in China (about 700,000 ``code,lat,lng`` rows of some 35 bytes) is
#: about 25 MB.
MAX_IMPORT_BYTES = 64 << 20
_CELL = 0.5  # degrees
_EARTH_KM = 6371.0
#: The store counter bumped by every change of the centres (see the module's NOTE).
_VERSION = "region_centres_version"


def _cell(lat: float, lng: float) -> tuple[int, int]:
    return int(math.floor(lat / _CELL)), int(math.floor(lng / _CELL))


def _km(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lng2 - lng1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_KM * math.asin(min(1.0, math.sqrt(h)))


def _position(lat: float, lng: float) -> tuple[float, float]:
    """``(lat, lng)`` as floats, or ValueError: numbers in [-90, 90] and [-180, 180] (so
    never NaN or infinite)."""
    try:
        lat, lng = float(lat), float(lng)
    except (TypeError, ValueError):
        raise ValueError("lat and lng must be numbers (decimal degrees)") from None
    if not (-90 <= lat <= 90 and -180 <= lng <= 180):  # NOTE: False for NaN too
        raise ValueError(f"lat must be in [-90, 90] and lng in [-180, 180] (decimal degrees); "
                         f"got {lat:g}, {lng:g}")
    return lat, lng


def _check(code: str, lat: float, lng: float) -> tuple[str, float, float]:
    if not is_region_code(code):
        raise ValueError(f"region code {code!r} must be 2 to 12 digits, such as 440106")
    try:
        lat, lng = _position(lat, lng)
    except ValueError as e:
        raise ValueError(f"region {code}: {e}") from None
    return code, lat, lng


def _once(rows) -> list[tuple[str, float, float]]:
    """Checked ``(place, code, lat, lng)`` rows as ``(code, lat, lng)``, each code once.
    NOTE: a code at two positions is refused, naming both places: the later one would
    silently win, and which is right is the operator's to say."""
    seen: dict[str, tuple[str, float, float]] = {}
    for place, code, lat, lng in rows:
        first = seen.setdefault(code, (place, lat, lng))
        if first[1:] != (lat, lng):
            raise ValueError(f"region {code} is given twice at different positions: {first[0]} "
                             f"({first[1]}, {first[2]}) and {place} ({lat}, {lng}); keep one")
    return [(code, lat, lng) for code, (_, lat, lng) in seen.items()]


class RegionTable:
    """Division centres in the data folder's store, and the nearest-centre lookup."""

    def __init__(self, store: Store, max_km: float = DEFAULT_MAX_KM) -> None:
        if isinstance(max_km, bool) or not isinstance(max_km, (int, float)) or not 0 < max_km < 20_000:
            raise ValueError(f"max_km must be a number of kilometres between 0 and 20,000 (such as 30), got {max_km!r}")
        self._store = store
        self._db = store.db("region_centres")
        self.max_km = max_km
        #: (the version of the centres it was built from, the grid), or None before the first lookup
        self._grid: tuple[int, dict[tuple[int, int], list[tuple[str, float, float]]]] | None = None

    # -- editing ------------------------------------------------------------------------
    def put(self, rows) -> int:
        """Add or replace centres: ``(code, lat, lng)`` rows, all or none (a code twice
        counts once at one position, and is refused at two). Returns how many. Every
        process with the folder open uses them from its next lookup."""
        return self._write(_once((f"row {i}", *_check(*row)) for i, row in enumerate(rows, 1)))

    def _write(self, checked: list[tuple[str, float, float]]) -> int:
        with self._store.write() as txn:
            for code, lat, lng in checked:
                txn.put(code.encode(), pack((lat, lng)), db=self._db)
            self._store.next_id(txn, _VERSION)
        return len(checked)

    def import_csv(self, path: Path, max_bytes: int = MAX_IMPORT_BYTES) -> int:
        """Load ``code,lat,lng`` rows (a header line is allowed); a bad row rejects the
        whole file with its line number. A code given twice at one position counts once;
        at two positions it rejects the file, naming both lines. At most ``max_bytes`` are
        read (a pipe, a device or a wrong file): past them, ValueError, nothing loaded."""
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
            raise TypeError(f"max_bytes must be a whole number of bytes, got {max_bytes!r}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        rows = []
        raw = read_bounded(path, max_bytes, str(path), "a table of division centres (every village-level "
                           "centre in China, about 700,000 rows, is some 25 MB)")
        # NOTE: a UTF-8 BOM (Excel's "CSV UTF-8", Notepad) is dropped; a UTF-16 file, or one
        # in GBK, is refused as such rather than as "'utf-8' codec can't decode byte 0xff"
        text = decode_text(raw, str(path))
        reader = csv.reader(io.StringIO(text, newline=""))
        first = True
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader, None)
            except csv.Error as e:  # NOTE: a quote left open runs on to the end of the file
                raise ValueError(f"{path}:{start}: {e}: a quote (\") opened on this line and never "
                                 "closed takes the lines after it into one field") from None
            if row is None:
                break
            n = reader.line_num  # NOTE: the line a row ends on (a quoted field may span lines)
            header, first = first and bool(row) and row[0].strip().lower() == "code", False
            if not row or header:
                continue
            if len(row) != 3:
                spans = f" (a row from line {start}: a quote opened there is not closed)" if n > start else ""
                raise ValueError(f"{path}:{n}: expected code,lat,lng{spans}")
            try:
                rows.append((f"line {n}", *_check(row[0].strip(), row[1], row[2])))
            except ValueError as e:
                raise ValueError(f"{path}:{n}: {e}") from None
        try:
            once = _once(rows)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        return self._write(once)

    def list(self) -> list[tuple[str, float, float]]:
        with self._store.read() as txn:
            return self._rows(txn)

    def _rows(self, txn) -> list[tuple[str, float, float]]:
        return [(k.decode(), *unpack(v)) for k, v in txn.cursor(db=self._db)]

    # -- lookup -------------------------------------------------------------------------
    def _current_grid(self) -> dict:
        """The grid of the centres as stored now: rebuilt when any process changed them
        since it was built (the version and the rows are read in one transaction)."""
        txn = self._store.read()
        try:
            version = self._store.current_id(txn, _VERSION)
            built = self._grid
            if built is not None and built[0] == version:
                return built[1]
            grid: dict[tuple[int, int], list] = {}
            for code, lat, lng in self._rows(txn):
                grid.setdefault(_cell(lat, lng), []).append((code, lat, lng))
        finally:
            txn.abort()
        self._grid = (version, grid)
        return grid

    def locate(self, lat: float, lng: float) -> str | None:
        """The code of the nearest centre within ``max_km``, or None. ValueError for a
        position off the globe (see :func:`_position`)."""
        lat, lng = _position(lat, lng)
        grid = self._current_grid()
        if not grid:
            return None
        ci, cj = _cell(lat, lng)
        # NOTE: a cell is ~55 km high and 55 km x cos(lat) wide: look as many cells
        # around as max_km needs in each direction.
        cell_km = 111.2 * _CELL
        reach_i = max(1, math.ceil(self.max_km / cell_km))
        reach_j = min(360, max(1, math.ceil(self.max_km / max(1e-3, cell_km * math.cos(math.radians(lat))))))
        best, best_km = None, self.max_km
        for i in range(ci - reach_i, ci + reach_i + 1):
            for j in range(cj - reach_j, cj + reach_j + 1):
                for code, clat, clng in grid.get((i, j), ()):
                    d = _km(lat, lng, clat, clng)
                    if d <= best_km:
                        best, best_km = code, d
        return best

"""lat/lng -> administrative division code, from the centres an operator loads."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.regions import RegionTable, _km
from engine.store import Store


@pytest.fixture
def table(tmp_path):
    store = Store(tmp_path / "db")
    yield RegionTable(store)
    store.close()


def test_nearest_centre_within_reach(table):
    table.put([("440106", 23.1256, 113.3618), ("440103", 23.1292, 113.2443), ("110105", 39.9219, 116.4436)])
    assert table.locate(23.13, 113.35) == "440106"
    assert table.locate(23.13, 113.25) == "440103"
    assert table.locate(39.90, 116.40) == "110105"
    assert table.locate(31.23, 121.47) is None  # Shanghai: no centre within 30 km
    assert RegionTable(table._store, max_km=1500).locate(31.23, 121.47) == "110105"


def test_import_is_all_or_nothing_with_line_numbers(table, tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("code,lat,lng\n440106,23.1256,113.3618\n330106,30.2741,120.1551\n")
    assert table.import_csv(good) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("110105,39.92,116.44\n310101,31.2,not-a-number\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: region 310101: lat and lng must be numbers"):
        table.import_csv(bad)
    with pytest.raises(ValueError, match="2 to 12 digits"):
        table.put([("Guangzhou", 23.1, 113.3)])
    with pytest.raises(ValueError, match=r"lat must be in"):
        table.put([("440106", 123.1, 113.3)])
    assert [c for c, *_ in table.list()] == ["330106", "440106"]
    assert RegionTable(table._store).locate(30.27, 120.15) == "330106"  # read back from the store


def test_a_code_at_two_positions_is_refused_with_both_lines(table, tmp_path):
    """One code twice at different coordinates used to keep the last silently (and count
    it twice); now the file is refused naming both lines, and nothing is loaded."""
    twice = tmp_path / "twice.csv"
    twice.write_text("code,lat,lng\n440106,23.1256,113.3618\n330106,30.2741,120.1551\n"
                     "440106,39.9219,116.4436\n")
    with pytest.raises(ValueError, match=r"twice.csv: region 440106 is given twice at different "
                                         r"positions: line 2 \(23.1256, 113.3618\) and line 4 "
                                         r"\(39.9219, 116.4436\)"):
        table.import_csv(twice)
    assert table.list() == []
    with pytest.raises(ValueError, match="row 1 .* and row 2"):
        table.put([("440106", 23.1256, 113.3618), ("440106", 23.1, 113.3)])
    assert table.list() == []


def test_a_code_repeated_at_one_position_counts_once(table, tmp_path):
    same = tmp_path / "same.csv"  # the same numbers, written two ways
    same.write_text("440106,23.1256,113.3618\n440106, 23.12560 ,113.3618\n")
    assert table.import_csv(same) == 1
    assert table.list() == [("440106", 23.1256, 113.3618)]
    assert table.put([("330106", 30.2741, 120.1551)] * 2) == 1


def test_no_table_no_region(table):
    assert table.locate(23.13, 113.35) is None


def test_centres_changed_by_another_process_count_at_its_next_lookup(table):
    """Each gunicorn worker holds its own grid (here: a second table on the store plays the
    `wuma region import` process): a change counts from the next lookup, no restart."""
    assert table.locate(23.13, 113.35) is None  # the grid is built, empty
    importer = RegionTable(table._store)
    importer.put([("440106", 23.1256, 113.3618)])
    assert table.locate(23.13, 113.35) == "440106"
    grid = table._grid
    assert table.locate(23.13, 113.36) == "440106" and table._grid is grid  # unchanged: not rebuilt
    importer.put([("440106", 39.9219, 116.4436)])  # a centre moved
    assert table.locate(23.13, 113.35) is None
    assert table.locate(39.92, 116.44) == "440106"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-60, 60), st.floats(-179, 179)), min_size=1, max_size=40),
       st.floats(-60, 60), st.floats(-179, 179), st.sampled_from([5.0, 30.0, 80.0]))
def test_grid_lookup_equals_brute_force(tmp_path_factory, centres, lat, lng, max_km):
    """The grid only prunes: the answer is the nearest centre within max_km, as a scan of
    every centre finds it (ties aside)."""
    store = Store(tmp_path_factory.mktemp("regions"))
    try:
        t = RegionTable(store, max_km=max_km)
        rows = [(f"{i + 10:02d}", a, b) for i, (a, b) in enumerate(centres)]
        t.put(rows)
        # a probe near a centre, so that "within reach" happens often
        lat, lng = rows[0][1] + (lat - rows[0][1]) * 0.002, rows[0][2] + (lng - rows[0][2]) * 0.002
        dists = sorted((_km(lat, lng, a, b), code) for code, a, b in rows)
        want = dists[0][1] if dists[0][0] <= max_km else None
        got = t.locate(lat, lng)
        if want is None:
            assert got is None
        else:
            assert got is not None and abs(_km(lat, lng, *dict((c, (a, b)) for c, a, b in rows)[got])
                                           - dists[0][0]) < 1e-9
    finally:
        store.close()


@pytest.mark.parametrize("lat, lng", [(float("inf"), 0), (1e308, 0), (float("nan"), 0), (0, float("nan")),
                                      (95, 500), (-90.5, 0), (0, 180.01), ("north", 0)])
def test_locate_refuses_a_position_off_the_globe(table, lat, lng):
    table.put([("440106", 23.1256, 113.3618)])
    with pytest.raises(ValueError, match=r"lat must be in \[-90, 90\] and lng in \[-180, 180\]|must be numbers"):
        table.locate(lat, lng)


def test_locate_takes_the_edges_of_the_globe(table):
    table.put([("440106", 23.1256, 113.3618)])
    for lat, lng in [(90, 180), (-90, -180), (0, 0)]:
        assert table.locate(lat, lng) is None


@pytest.mark.parametrize("towns", [50, 10_000])
def test_a_quote_left_open_is_named_by_its_line_not_a_traceback(table, tmp_path, towns):
    """One stray ``"`` takes the rest of the file into one field: past 128 KiB the csv
    module raises its own error (it was a traceback). Either way the message names the
    line the quote opened on, and nothing is stored."""
    rows = ["code,lat,lng"] + [f"44{i:010d},23.1,113.2" for i in range(towns)]
    rows[40] = '"' + rows[40]
    f = tmp_path / "towns.csv"
    f.write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=f"{f}:(41: .*a quote|{towns + 1}: .*a row from line 41: a quote)"):
        table.import_csv(f)
    assert table.list() == []


def test_import_reads_a_utf8_bom(table, tmp_path):
    f = tmp_path / "centres.csv"
    f.write_bytes(b"\xef\xbb\xbfcode,lat,lng\r\n440106,23.1,113.3\r\n")
    assert table.import_csv(f) == 1
    assert table.list() == [("440106", 23.1, 113.3)]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
def test_import_refuses_utf16_by_name(table, tmp_path, encoding):
    """It raised UnicodeDecodeError: "'utf-8' codec can't decode byte 0xff in position 0"."""
    f = tmp_path / "centres.csv"
    f.write_bytes((b"\xfe\xff" if encoding == "utf-16-be" else b"")
                  + "code,lat,lng\r\n440106,23.1,113.3\r\n".encode(encoding))
    with pytest.raises(ValueError, match=r"centres\.csv: the file is UTF-16; save it as UTF-8$") as e:
        table.import_csv(f)
    assert not isinstance(e.value, UnicodeDecodeError)
    assert table.list() == []


def test_import_reads_csv_as_a_file_opened_with_newline_empty(table, tmp_path):
    f = tmp_path / "centres.csv"  # CRLF, and a newline inside a quoted cell (one row, not two)
    f.write_bytes(b'code,lat,lng\r\n"440106",23.1,113.3\r\n"330106\n",30.2,120.1\r\n')
    assert table.import_csv(f) == 2
    assert [c for c, *_ in table.list()] == ["330106", "440106"]


@pytest.mark.parametrize("max_km", ["30", 0, -5, float("nan"), True, 1e9])
def test_max_km_must_be_a_distance(tmp_path, max_km):
    from engine.store import Store

    store = Store(tmp_path / "db")
    with pytest.raises(ValueError, match="max_km must be a number of kilometres"):
        RegionTable(store, max_km=max_km)
    store.close()


def _fifo_fed(path, chunk: bytes, times: int | None):
    """A named pipe at ``path`` (as `<(...)` gives), fed ``chunk`` ``times`` times (None:
    until its reader stops), from a thread."""
    import os
    import threading

    os.mkfifo(path)

    def feed():
        try:
            with open(path, "wb") as fh:
                n = 0
                while times is None or n < times:
                    fh.write(chunk)
                    n += 1
        except BrokenPipeError:
            pass

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return thread


def test_import_from_a_pipe_reads_at_most_max_bytes(table, tmp_path):
    """A pipe (`wuma region import <(...)`) has no size to check first: it was read whole,
    however long it ran."""
    endless = tmp_path / "endless.csv"
    feeder = _fifo_fed(endless, b"440106,23.1,113.3\n" * 1000, None)
    with pytest.raises(ValueError, match=r"endless\.csv: over 64 KiB, too large for a table of division "
                                         r"centres .*is it the right file\?$"):
        table.import_csv(endless, max_bytes=64 << 10)
    feeder.join(5)
    assert not feeder.is_alive() and table.list() == []
    # within the bound, a pipe is read as a file is
    short = tmp_path / "short.csv"
    feeder = _fifo_fed(short, b"440106,23.1,113.3\n", 1)
    assert table.import_csv(short, max_bytes=64 << 10) == 1
    feeder.join(5)


def test_import_reads_a_file_of_exactly_max_bytes_and_refuses_one_more(table, tmp_path):
    row = b"440106,23.1,113.3\n"
    f = tmp_path / "centres.csv"
    f.write_bytes(row)
    assert table.import_csv(f, max_bytes=len(row)) == 1
    with pytest.raises(ValueError, match=rf"centres\.csv: over {len(row) - 1} bytes, too large"):
        table.import_csv(f, max_bytes=len(row) - 1)
    # a device has no size either: read up to the bound, not until memory runs out
    with pytest.raises(ValueError, match=r"^/dev/zero: over 4 KiB, too large for a table of division centres"):
        table.import_csv("/dev/zero", max_bytes=4096)

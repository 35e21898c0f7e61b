"""The ``wuma`` command. Each command parses, calls the library once, and formats.

Library errors become :class:`click.ClickException` with the library's message.
"""

from __future__ import annotations

import functools
import json
import struct
import sys
from pathlib import Path

import click
import lmdb

from engine import DataFolder, WumaError, default_data_path
from engine.files import decode_text, private_output
from engine.spec import PRESETS

__all__ = ["cli", "pass_data", "emit", "library_errors"]


def library_errors(fn):
    """Turn library errors into click errors a person can act on (no tracebacks)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (WumaError, ValueError, TypeError) as e:
            raise click.ClickException(str(e)) from None
        except (struct.error, OverflowError):
            # NOTE: a backstop: a number too large (or negative) for the store's 64-bit keys
            # that no option or library check caught.
            raise click.ClickException(
                "a number given is out of range: ids and sequence numbers are whole numbers "
                "from 0, and smaller than 2^63") from None
        except lmdb.BadValsizeError:
            # NOTE: a backstop too: an empty id, or one longer than any key the store holds
            # (511 bytes), that no library check caught (`wuma bans lift ""`)
            raise click.ClickException(
                "an id given is empty or too long: nothing is stored under it") from None
        except lmdb.MapFullError:
            raise click.ClickException(
                "the data store is full (its map size; raise WUMA_MAP_SIZE): nothing was changed") from None
        except lmdb.Error as e:  # NOTE: a failed commit changes nothing (a disk full, a file-size limit)
            hint = ""
            if "Input/output error" in str(e) or "No space" in str(e):
                # NOTE: LMDB reports a short write on a full file system as EIO
                hint = "; check that its disk has free space (df), then try again"
            raise click.ClickException(f"the data store could not write ({e}): nothing was changed{hint}") from None
        except OSError as e:
            raise click.ClickException(f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")) from None

    return wrapper


@library_errors
def _open_folder(path: Path) -> DataFolder:
    return DataFolder(path)


def pass_data(fn):
    """Open the data folder chosen by ``--data`` and pass it as the first argument."""

    @click.pass_context
    @functools.wraps(fn)
    def wrapper(ctx, *args, **kwargs):
        path = ctx.find_root().params.get("data") or default_data_path()
        data = _open_folder(Path(path))
        ctx.call_on_close(data.close)
        return library_errors(fn)(data, *args, **kwargs)

    return wrapper


def emit(obj, as_json: bool, text: str | None = None) -> None:
    """Print one result: a JSON line, or a human line."""
    if as_json:
        click.echo(json.dumps(obj, ensure_ascii=False, sort_keys=True))
    else:
        click.echo(text if text is not None else str(obj))


def _progress_enabled() -> bool:
    return sys.stderr.isatty()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), envvar="WUMA_DATA",
              help="Data folder (default: $WUMA_DATA, else ./wuma-data).")
def cli(data):
    """Wuma (五码): generate, pack, link and verify one-item-one-code codes.

    Example: wuma --data ./wuma-data batch list
    """


@cli.command()
@click.option("--preset", type=click.Choice(PRESETS), default="beverage", show_default=True,
              help="Packaging spec preset.")
@click.option("--url-base", default="HTTPS://S.EXAMPLE.CN/Q/", show_default=True,
              help="Short URL printed before each code: it must fit QR version 3-M, its "
                   "path in capitals as the landing page answers it.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@library_errors
def init(ctx, preset, url_base, as_json):
    """Create a data folder: random master key (0600, never shown) and packaging spec.

    Example: wuma --data ./wuma-data init --preset baijiu
    """
    path = ctx.find_root().params.get("data") or default_data_path()
    data = DataFolder.init(Path(path), preset=preset, url_base=url_base)
    try:
        info = {"data": str(data.path), "spec": data.spec.name, "key_version": data.keys.current,
                "url_base": data.url_base,
                "levels": [{"name": lv.name, "roles": list(lv.roles)} for lv in data.spec.levels]}
        emit(info, as_json, f"initialised {data.path} (spec {data.spec.name}, key version "
                            f"{data.keys.current}, levels "
                            + ", ".join(f"{lv.name}[{'+'.join(lv.roles)}]" for lv in data.spec.levels)
                            + ")")
    finally:
        data.close()


# -- keys --------------------------------------------------------------------------------
@cli.group()
def key():
    """Master key versions.

    Example: wuma key rotate
    """


@key.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def key_list(data, as_json):
    """List master key versions (never the keys).

    Example: wuma key list --json
    """
    emit({"versions": data.keys.versions, "current": data.keys.current}, as_json,
         f"versions {', '.join(map(str, data.keys.versions))}; new batches use {data.keys.current}")


@key.command("rotate")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def key_rotate(data, as_json):
    """Add a master key version for new batches; printed codes stay valid.

    Example: wuma key rotate
    """
    v = data.rotate_key()
    emit({"current": v}, as_json, f"new batches now use key version {v}")


@cli.command()
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def backup(data, dest, as_json):
    """Copy the data folder (store, keys, wuma.json) to a new folder, consistent while
    servers run; restore by using the copy as the data folder.

    Example: wuma backup /backups/wuma-2026-11-30
    """
    got = data.backup(dest)
    emit(got, as_json, f"backed up to {got['path']}: store {got['store_bytes']:,} bytes (transaction "
                       f"{got['last_txnid']}), keys {', '.join(got['keys'])}; it holds the master keys: keep it "
                       "as safe as the folder")


# -- batches -----------------------------------------------------------------------------
@cli.group()
def batch():
    """Code batches (metadata only; codes are regenerated from the key).

    Example: wuma batch create --level cap --count 100000000
    """


def _batch_line(b) -> str:
    state = f"activated ({b.activated:,} of {b.count:,})" if b.state == "activated" else b.state
    return f"batch {b.id}: {b.level} x {b.count:,} [{', '.join(b.roles)}] key v{b.key_version} {state}"


@batch.command("create")
@click.option("--level", required=True, help="Packaging level, e.g. cap, case, pallet.")
@click.option("--count", required=True, type=int, help="Units in the batch.")
@click.option("--note", default="", help="Free text kept with the batch.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def batch_create(data, level, count, note, as_json):
    """Register a batch of codes (state generated).

    Example: wuma batch create --level cap --count 100000000
    """
    b = data.create_batch(level, count, note=note)
    emit(b.to_dict(), as_json, _batch_line(b))


@batch.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_data
def batch_list(data, as_json):
    """List batches.

    Example: wuma batch list --json
    """
    for b in data.batches.list():
        emit(b.to_dict(), as_json, _batch_line(b))


@batch.command("show")
@click.argument("batch_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def batch_show(data, batch_id, as_json):
    """Show one batch with its code formats.

    Example: wuma batch show 1
    """
    b = data.batches.get(batch_id)
    d = b.to_dict()
    d["code_formats"] = {r: data.spec.role(r).format.describe() for r in b.roles}
    text = _batch_line(b) + "".join(
        f"\n  {r}: {f['name']}, {f['length']} chars, {f['tag_bits']} tag bits"
        for r, f in d["code_formats"].items())
    emit(d, as_json, text)


@batch.command("export")
@click.argument("batch_id", type=int)
@click.option("--plaintext", is_flag=True,
              help="Required: acknowledges that the file holds plaintext codes.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="CSV file to write, or - for stdout.")
@click.option("--range", "serial_range", default=None, help="Serial range A:B (B exclusive).")
@click.option("--url", is_flag=True, help="Write the short URL form of each code.")
@pass_data
def batch_export(data, batch_id, plaintext, output, serial_range, url):
    """Stream a batch's codes as CSV: serial, then one column per role.

    Example: wuma batch export 1 --plaintext -o codes.csv
    """
    if not plaintext:
        raise click.UsageError("plaintext export writes usable codes to disk: add --plaintext "
                               "(print lines should receive encrypted packs instead)")
    b = data.batches.get(batch_id)
    start, stop = _parse_range(serial_range, b.count)
    url_base = data.url_base if url else None
    if output == "-":
        data.codes.export_csv(b, sys.stdout.buffer, start=start, stop=stop, url_base=url_base)
        return
    # APPSEC: usable codes: 0600 (like `pack open`), and no partial file under the final name
    with private_output(output) as fh:
        if _progress_enabled():
            with click.progressbar(length=stop - start, label="exporting", file=sys.stderr) as bar:
                n = data.codes.export_csv(b, fh, start=start, stop=stop, url_base=url_base,
                                          progress=bar.update)
        else:
            n = data.codes.export_csv(b, fh, start=start, stop=stop, url_base=url_base)
    click.echo(f"wrote {n:,} units of batch {b.id} to {output}", err=True)


def _parse_range(text: str | None, count: int) -> tuple[int, int]:
    if text is None:
        return 0, count
    try:
        a, b = text.split(":")
        start = int(a) if a else 0
        stop = int(b) if b else count
    except ValueError:
        raise click.BadParameter(f"range must look like A:B, got {text!r}") from None
    if not 0 <= start < stop <= count:
        raise click.BadParameter(f"range {text} is outside 0:{count}")
    return start, stop


# -- codes -------------------------------------------------------------------------------
@cli.group()
def code():
    """Check codes.

    Example: wuma code verify 1Z05JGJADZG79SCFE9CS
    """


@code.command("verify")
@click.argument("codes", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_data
def code_verify(data, codes, as_json):
    """Verify codes (or URLs) as the scan API answers them: genuine, inactive (not yet
    activated), voided or invalid. Read-only: nothing is recorded. `-` reads one per line
    from stdin.

    Example: wuma code verify HTTPS://S.EXAMPLE.CN/Q/1Z05JGJADZG79SCFE9CS
    """
    from engine.aggregation import Aggregation
    from engine.scan import code_verdict

    aggregation = Aggregation(data)

    def inputs():
        for c in codes:
            if c == "-":
                # NOTE: bytes, line by line as they arrive (a scanner at a terminal), read as
                # every text file given is: a UTF-8 BOM (Excel, Notepad) is not part of the
                # first code; UTF-16 and other encodings are refused by name, whatever the locale
                at = 0
                for line in sys.stdin.buffer:
                    yield decode_text(line, "stdin", offset=at).rstrip("\r\n")
                    at += len(line)
            else:
                yield c

    for text in inputs():
        verdict, v = code_verdict(data.codes, aggregation, text)
        d = {**v.to_dict(), "verdict": verdict, "input": text}
        human = (f"{text}\t{verdict}\tbatch {v.batch} serial {v.serial} {v.role} ({v.level})"
                 if v.genuine else f"{text}\tinvalid")
        emit(d, as_json, human)


@cli.command()
@click.option("--quick", is_flag=True, help="Small sizes (seconds); default is full size.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def bench(quick, as_json):
    """Measure generation, export memory and verification on this machine.

    Example: wuma bench --quick
    """
    from engine.benchmark import run_all

    results = run_all(quick=quick)
    if as_json:
        emit(results, True)
        return
    click.echo(f"{'figure':<44} {'value':>16}  target")
    for row in results["rows"]:
        click.echo(f"{row['name']:<44} {row['display']:>16}  {row['target']}")
    click.echo(f"machine: {results['machine']}")


from cli.packs import line, pack  # noqa: E402

cli.add_command(line); cli.add_command(pack)


from cli.scan import account, alerts, bans, region, serve  # noqa: E402

cli.add_command(account)
cli.add_command(bans)
cli.add_command(serve)
cli.add_command(alerts)
cli.add_command(region)


from cli.admin import admin_token, campaign, ledger, payout, pool, product, voucher  # noqa: E402

for _group in (product, pool, campaign, ledger, voucher, payout, admin_token):
    cli.add_command(_group)


from cli.aggregate import register as _register_aggregate  # noqa: E402

_register_aggregate(cli)


def main() -> None:  # pragma: no cover
    cli()

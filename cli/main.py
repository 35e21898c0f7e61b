"""The ``wuma`` command. Each command parses, calls the library once, and formats.

Library errors become :class:`click.ClickException` with the library's message.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import select
import shlex
import struct
import sys
from pathlib import Path

import click
import lmdb

from engine import DataFolder, WumaError, default_data_path
from engine.errors import Conflict, TakenByRevoked
from engine.files import decode_text, private_output, read_bounded, size_text
from engine.formats import MAX_INPUT
from engine.spec import PRESETS
from engine.store import MAP_SIZE_FORM

__all__ = ["add_with_token", "check_output_shown_once", "cli", "emit", "emit_shown_once", "library_errors", "pass_data",
           "read_input", "stdin_binary", "stdout_binary", "wuma_command"]


def library_errors(fn):
    """Turn library errors into click errors a person can act on (no tracebacks)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:
            raise  # NOTE: the command group (_Wuma.invoke) tells `| head` from a real error
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
                f"the data store is full (its map size: raise WUMA_MAP_SIZE, {MAP_SIZE_FORM}): "
                "nothing was changed") from None
        except lmdb.Error as e:  # NOTE: a failed commit changes nothing (a disk full, a file-size limit)
            hint = ""
            if "Input/output error" in str(e) or "No space" in str(e):
                # NOTE: LMDB reports a short write on a full file system as EIO
                hint = "; check that its disk has free space (df), then try again"
            raise click.ClickException(f"the data store could not write ({e}): nothing was changed{hint}") from None
        except OSError as e:
            raise click.ClickException(_os_error_text(e)) from None

    return wrapper


def _os_error_text(e: OSError) -> str:
    """``No such file or directory: PATH``; the message alone if it names the file already."""
    where = "" if e.filename is None or str(e.filename) in (e.strerror or "") else f": {e.filename}"
    return f"{e.strerror or e}{where}"


# -- standard streams and inputs --------------------------------------------------------------
def _reader_gone(stream) -> bool:
    """Whether ``stream`` (standard output) is a pipe or socket whose reader has gone: a
    ``| head`` that stopped reading."""
    try:
        fd = stream.fileno()
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # NOTE: closed, or no descriptor (a test's buffer)
        return False


def stdin_binary(instead: str):
    """Standard input as bytes, for ``-``; a clear error if it is closed (``<&-``, some
    daemons and cron set-ups), saying what to give ``instead``."""
    if sys.stdin is None:
        raise click.ClickException(f"standard input is closed, so `-` has nothing to read: {instead}")
    return sys.stdin.buffer


def stdout_binary():
    """Standard output as bytes, for ``-o -``; a clear error if it is closed (``>&-``),
    checked before any work."""
    if sys.stdout is None:
        raise click.ClickException("standard output is closed, so `-o -` has nowhere to write: give -o a "
                                   "file name, or run the command with an output (`> FILE` or a pipe)")
    return sys.stdout.buffer


def read_input(source, name: str, limit: int, what: str) -> bytes:
    """The bytes of a file a person gave (``source``; ``-`` for standard input), ``name``
    naming it in messages, ``what`` saying what it holds and how large that is. At most
    ``limit`` bytes are read: past them, an error instead of reading on (``/dev/zero``, a
    wrong file: the process grew until the OOM killer stopped it)."""
    stdin = str(source) == "-"
    if stdin:
        source = stdin_binary("give a file name instead, or run the command with input (`< FILE` or a pipe)")
    try:
        return read_bounded(source, limit, name, what, kind="input" if stdin else "file")
    except ValueError as e:
        raise click.ClickException(str(e)) from None


def wuma_command(*words: str) -> str:
    """The command line to run next, with the ``--data`` given to this one (to name it in a
    message that says what to do)."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    data = root.params.get("data") if root else None
    lead = ["wuma"]
    if data is not None and root.get_parameter_source("data") == click.ParameterSource.COMMANDLINE:
        lead += ["--data", str(data)]
    return shlex.join([*lead, *words])


def check_output_shown_once(what: str) -> None:
    """Before a change whose output is shown once and kept nowhere (a token, a key share):
    refuse if it cannot reach anyone, standard output closed or its reader gone."""
    why = ("is closed" if sys.stdout is None else "is a pipe whose reader has gone"
           if _reader_gone(sys.stdout) else None)
    if why:
        raise click.ClickException(f"standard output {why}: {what} is printed there once and kept nowhere "
                                   "else; run the command with an output (a terminal, `> FILE`); nothing was done")


def emit_shown_once(obj, as_json: bool, text: str, *, done: str, lost: str, then: str) -> None:
    """:func:`emit` output that is shown once (a token, a key share), after the change is
    made. If it cannot be written (a full disk, a reader gone), an error that says what was
    changed (``done``), what was lost (``lost``) and what to do now (``then``)."""
    try:
        if sys.stdout is None:  # NOTE: click.echo would print nothing, and say nothing
            raise OSError(errno.EBADF, "closed")
        emit(obj, as_json, text)
        sys.stdout.flush()
    except OSError as e:
        raise click.ClickException(f"{done}, but {lost} could not be printed (standard output: "
                                   f"{e.strerror or e}) and Wuma keeps no copy: {then}") from None


def add_with_token(add, group: str, ident: str):
    """``add()`` (a ``wuma GROUP add`` that makes a token shown once), its result; a name
    already taken by an active one (the plain Conflict of an add) is an error that says how
    to give it a new token, as the reason may be an earlier add whose output was lost. Taken
    by a revoked one, the library's message says to use another (a revoked one gets no token)."""
    check_output_shown_once("the token")
    try:
        return add()
    except TakenByRevoked as e:
        raise click.ClickException(str(e)) from None
    except Conflict as e:
        raise click.ClickException(f"{e}; if its token was lost (an earlier `{group} add` whose output "
                                   f"was lost), give it a new one with `{wuma_command(group, 'token', ident)}`"
                                   ) from None


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


class _NotUTF8(click.ClickException):
    exit_code = 2  # NOTE: as click's own usage errors


class _ReaderGone(Exception):
    """Standard output's reader has gone (``| head``): not an OSError, which click would
    turn into status 1."""


def _not_utf8_text(text: str) -> bool:
    """Whether ``text`` came from bytes that are not UTF-8: Python keeps each such byte as a
    lone surrogate (U+DC80 to U+DCFF, ``surrogateescape``)."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _names_existing(text: str) -> bool:
    """Whether ``text`` names a file or folder that exists, its bytes as they came (a file
    unzipped from a Windows archive has a GBK name on disk: given as it is, it is found)."""
    try:
        return os.path.lexists(os.fsencode(text))
    except (OSError, ValueError):  # NOTE: a NUL byte, a name too long
        return False


def _not_utf8(args: list[str]) -> None:
    """Refuse, before anything is done, an argument that is not UTF-8: Python reads the
    command line as UTF-8 and keeps bytes that are not as lone surrogates (a terminal in
    GBK typing Chinese), which fail at the first write: after ``init`` made half a folder.
    NOTE: an argument (or an option's value) that names an existing file or folder is left
    alone: its bytes are its name on disk (a file unzipped from a Windows archive), and they
    open it. Not ``--data``'s: the store cannot open a folder whose name is not UTF-8."""
    for i, arg in enumerate(args):
        if not _not_utf8_text(arg):
            continue
        raw = arg.encode("utf-8", "surrogateescape")
        opt, eq, value = arg.partition("=")
        if eq and opt.startswith("--") and not _not_utf8_text(opt):
            which, raw, option, name = opt, value.encode("utf-8", "surrogateescape"), opt, value
        elif i and args[i - 1].startswith("-") and not arg.startswith("-"):
            which, option, name = f"the value of {args[i - 1]}", args[i - 1], arg
        else:
            which, option, name = f"argument {i + 1}", None, arg
        if option != "--data" and _names_existing(name):
            continue
        shown = raw.decode("ascii", "backslashreplace")  # NOTE: the bytes as they came, \xNN
        try:
            gbk = f" (read as GBK it is \"{raw.decode('gbk')}\")"
        except UnicodeDecodeError:
            gbk = ""
        raise _NotUTF8(f"{which}, \"{shown}\", is not UTF-8 text{gbk}: the terminal does not send UTF-8 "
                       "(it is set to GBK or another legacy encoding); set it to UTF-8 (in its settings, "
                       "and LANG such as zh_CN.UTF-8) and type it again; nothing was done")


def _flush_stdout() -> None:
    if sys.stdout is None:
        return
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:  # NOTE: a full disk under `> FILE`
        raise click.ClickException(f"standard output: {e.strerror or e}") from None


class _Wuma(click.Group):
    """The ``wuma`` group: arguments checked before anything runs, and a reader that stops
    early (``wuma batch export 1 --plaintext -o - | head``) ends the command quietly."""

    def parse_args(self, ctx, args):
        _not_utf8(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            rv = super().invoke(ctx)
            _flush_stdout()  # NOTE: here, not at exit ("Exception ignored ... BrokenPipeError")
            return rv
        except BrokenPipeError as e:
            if _reader_gone(sys.stdout):
                raise _ReaderGone from None
            raise click.ClickException(_os_error_text(e)) from None

    def main(self, *args, **kwargs):
        try:
            return super().main(*args, **kwargs)
        except _ReaderGone:
            # NOTE: as `cat` or `grep` end under `| head`: no message, status 141, what a shell
            # reports for a command killed by SIGPIPE (128 + 13). Not 0: the output was cut
            # short, and this end cannot tell a `head` done reading from a consumer that died
            # (`set -o pipefail` sees it as it sees `cat`). Exit, not the signal: the data
            # folder and the files are closed as on any exit.
            null = os.open(os.devnull, os.O_WRONLY)
            for stream in (sys.stdout, sys.stderr):
                if _reader_gone(stream):
                    os.dup2(null, stream.fileno())  # NOTE: Python's last flush at exit writes there
            os.close(null)
            sys.exit(141)


@click.group(cls=_Wuma, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), envvar="WUMA_DATA",
              help="Data folder (default: $WUMA_DATA, else ./wuma-data).")
@click.pass_context
def cli(ctx, data):
    """Wuma (五码): generate, pack, link and verify one-item-one-code codes.

    Example: wuma --data ./wuma-data batch list
    """
    if (data is not None and ctx.get_parameter_source("data") == click.ParameterSource.ENVIRONMENT
            and _not_utf8_text(str(data))):
        raise _NotUTF8(f"WUMA_DATA, \"{os.fsencode(data).decode('ascii', 'backslashreplace')}\", is not UTF-8 "
                       "text: it was set by a terminal or script in GBK or another legacy encoding; set it "
                       "again from a UTF-8 one; nothing was done")


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
    current, refused = data.batch_key()
    doc = {"versions": data.keys.versions, "current": current}
    then = f"new batches use {current}"
    if refused:  # NOTE: said here too, not only when `batch create` is refused
        doc["batches_refused"] = refused
        then = f"no new batch before `wuma key rotate`: {refused}"
    emit(doc, as_json, f"versions {', '.join(map(str, data.keys.versions))}; {then}")


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
        data.codes.export_csv(b, stdout_binary(), start=start, stop=stop, url_base=url_base)
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


#: The longest line ``code verify -`` reads: a code is at most MAX_INPUT characters, even as
#: a URL, a character at most 4 bytes in UTF-8 (a longer line is answered invalid up to here,
#: refused past it: not read on, as /dev/zero or a binary file would be, without end).
_MAX_CODE_LINE = 4096


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
    stdin = stdin_binary("give the codes as arguments, or run the command with input "
                         "(`< codes.txt` or a pipe)") if "-" in codes else None

    def inputs():
        for c in codes:
            if c == "-":
                # NOTE: bytes, line by line as they arrive (a scanner at a terminal), read as
                # every text file given is: a UTF-8 BOM (Excel, Notepad) is not part of the
                # first code; UTF-16 and other encodings are refused by name, whatever the locale
                at = n = 0
                # NOTE: the bound is on a line's content, not its line break: read room for a
                # CRLF after it (a longer line comes without one, its content past the bound)
                while line := stdin.readline(_MAX_CODE_LINE + 2):
                    n += 1
                    content = line[:-1].removesuffix(b"\r") if line.endswith(b"\n") else line
                    if len(content) > _MAX_CODE_LINE:
                        raise click.ClickException(
                            f"stdin: line {n} is over {size_text(_MAX_CODE_LINE)}, so it is no code (one is at "
                            f"most {MAX_INPUT} characters, even as a full URL): give one code a line")
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

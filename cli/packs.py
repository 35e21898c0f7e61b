"""``wuma line`` and ``wuma pack``: print lines, and the encrypted code packs sent to them.

Brand side (needs ``--data``): ``line add/list/revoke/brand-keys``, ``pack export/list/
revoke/report/serve``. Line controller side (no data folder): ``line keygen``, ``pack open``.

Trust set-up, once per line::

    brand$  wuma line brand-keys -o brand-keys.json        # public; give it to the line
    line$   wuma line keygen -o /etc/wuma-line --brand-key brand-keys.json
    brand$  wuma line add L1 --pubkey line.pub             # line.pub from the line

``pack open`` checks packs against ``<key folder>/brand-keys.json`` (or ``--brand-key``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cli.main import (
    _parse_range,
    _progress_enabled,
    check_output_shown_once,
    emit,
    emit_shown_once,
    library_errors,
    pass_data,
    read_input,
    stdin_binary,
    stdout_binary,
    wuma_command,
)
from cli.scan import run_gunicorn, server_options
from engine.files import decode_text, private_output
from engine.lines import (
    BRAND_KEYS_FILE,
    LINE_PUBLIC_FILE,
    LineKeys,
    generate_line_keys,
    load_brand_keys,
)
from engine.packs import PackRegistry, RangeHeld, open_pack_to_file

__all__ = ["line", "pack"]


#: The largest key file read (line.pub, brand-keys.json) and open receipt: a few hundred
#: bytes each.
_MAX_KEY_FILE = 64 * 1024
_KEY_FILE_SIZE = "a key file (line.pub, brand-keys.json), a few hundred bytes"


def _line_text(ln) -> str:
    state = "revoked" if ln.revoked else "active"
    return f"line {ln.name}: key {ln.fingerprint} {state}"


@click.group()
def line():
    """Print lines: their keys, and the brand's registry of them.

    Example: wuma line add L1 --pubkey line.pub
    """


@line.command("keygen")
@click.option(
    "-o",
    "--output",
    "folder",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Key folder to create on the line controller (private keys stay here).",
)
@click.option(
    "--brand-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The brand's brand-keys.json, kept in the folder to check packs against.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@library_errors
def line_keygen(folder, brand_key, as_json):
    """Make a line's key pair (X25519 + Ed25519; private files 0600) and line.pub.

    Example: wuma line keygen -o /etc/wuma-line --brand-key brand-keys.json
    """
    blob = read_input(brand_key, str(brand_key), _MAX_KEY_FILE, _KEY_FILE_SIZE) if brand_key else None
    keys = generate_line_keys(folder, brand_keys=blob)
    pub = folder / LINE_PUBLIC_FILE
    emit(
        {"folder": str(folder), "public": str(pub), "fingerprint": keys.fingerprint},
        as_json,
        f"line key {keys.fingerprint} in {folder}; send {pub} to the brand (`wuma line add`)",
    )


@line.command("brand-keys")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="File to write (public keys only), or - for stdout.",
)
@click.option(
    "--revoke-version",
    type=int,
    default=None,
    help="First mark this key version's signing key revoked (every pack it signed is then withheld: "
    "not served, and refused by `pack open --server`).",
)
@pass_data
def line_brand_keys(data, output, revoke_version):
    """Write the brand's public signing keys (brand-keys.json) for line controllers.

    Example: wuma line brand-keys -o brand-keys.json
    """
    reg = PackRegistry(data)
    revoked = False

    def write(fh) -> None:
        nonlocal revoked
        if revoke_version is not None:
            reg.lines.revoke_signer(revoke_version)
            revoked = True
        fh.write(reg.lines.brand_keys())
        fh.flush()

    # NOTE: the output is opened before a version is revoked (a folder that does not exist,
    # standard output closed: nothing revoked), and written whole or not at all
    try:
        if output == "-":
            write(stdout_binary())
            return
        with private_output(output, perms=0o644) as fh:  # NOTE: public keys, for the lines
            write(fh)
    except OSError as e:
        if not revoked:
            raise
        again = wuma_command("line", "brand-keys", "-o", output)
        raise click.ClickException(
            f"key version {revoke_version} was revoked, but {output if output != '-' else 'standard output'} "
            f"could not be written ({e.strerror or e}): write brand-keys.json again with `{again}` (the "
            "version stays revoked)") from None
    click.echo(f"wrote brand signing keys to {output}", err=True)


@line.command("add")
@click.argument("name")
@click.option(
    "--pubkey",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The line's line.pub (from `wuma line keygen`).",
)
@click.option("--note", default="", help="Free text kept with the line.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def line_add(data, name, pubkey, note, as_json):
    """Register a print line by its public key file.

    Example: wuma line add L1 --pubkey line.pub
    """
    ln = PackRegistry(data).lines.add(name, read_input(pubkey, str(pubkey), _MAX_KEY_FILE, _KEY_FILE_SIZE),
                                      note=note)
    emit(ln.to_dict(), as_json, _line_text(ln))


@line.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_data
def line_list(data, as_json):
    """List print lines.

    Example: wuma line list --json
    """
    for ln in PackRegistry(data).lines.list():
        emit(ln.to_dict(), as_json, _line_text(ln))


@line.command("revoke")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def line_revoke(data, name, as_json):
    """Revoke a line: the pack server refuses it from now on (no listing, no pack, new or
    issued before; `pack open --server` is refused too), and its packs are not exported.

    Example: wuma line revoke L1
    """
    ln = PackRegistry(data).lines.revoke(name)
    emit(ln.to_dict(), as_json, _line_text(ln))


@click.group()
def pack():
    """Encrypted, signed code packs for print lines.

    Example: wuma pack export 1 --line L1 --parts 4 -o packs/
    """


@pack.command("export")
@click.argument("batch_id", type=int)
@click.option("--line", "line_name", required=True, help="Registered line to encrypt for.")
@click.option("--range", "serial_range", default=None, help="Serial range A:B (B exclusive).")
@click.option(
    "--parts", default=1, show_default=True, type=click.IntRange(1), help="Pack files to write."
)
@click.option(
    "--split-key",
    is_flag=True,
    help="Split the key: the file alone cannot be opened; print a share to send separately.",
)
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the pack files.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_data
def pack_export(data, batch_id, line_name, serial_range, parts, split_key, out_dir, as_json):
    """Write encrypted, signed packs of a batch (or range) for one line.

    Codes are regenerated from the keys and encrypted as they are made; no plaintext is
    written. Files are named <line>-b<batch>-<start>-<stop>-<pack id>.wpk; an existing
    file is never replaced. All or nothing: the pull server serves the packs only once
    every part is in place; if any part fails (or Ctrl-C), no pack file is left, and packs
    already registered are marked export failed (`pack list`; withheld: a line holding a
    copy sets it aside): export again. Serials already in a pack that is not revoked (of
    any line; an export still running too) are refused, naming the packs: revoke them
    first if they must not be printed. With --split-key each pack's share is printed
    once: send it by another channel (it is not stored); the line gives it to
    `wuma pack open --share-file`.

    Example: wuma pack export 1 --line L1 --range 0:1000000 --parts 2 --split-key -o packs/
    """
    b = data.batches.get(batch_id)
    start, stop = _parse_range(serial_range, b.count)
    reg = PackRegistry(data)
    if split_key:
        check_output_shown_once("each pack's key share")

    def export(progress=None):
        return reg.export(batch_id, line_name, out_dir, start=start, stop=stop, parts=parts,
                          split_key=split_key, progress=progress)

    try:
        if _progress_enabled():
            with click.progressbar(length=stop - start, label="exporting", file=sys.stderr) as bar:
                issued = export(bar.update)
        else:
            issued = export()
    except RangeHeld as e:  # NOTE: the revoke command it names, with this command's --data
        raise click.ClickException(e.worded(wuma_command("pack", "revoke", *e.pack_ids))) from None
    for i, p in enumerate(issued):
        text = f"pack {p.id}: {p.path} serials {p.start}:{p.stop} ({p.count:,} units) for {p.line}"
        if not p.share:
            emit(p.to_dict(), as_json, text)
            continue
        text += f"\n  key share (send separately): {p.share}"
        emit_shown_once(p.to_dict(), as_json, text, **_shares_lost(issued[i:], batch_id, line_name, out_dir))


def _shares_lost(lost, batch_id: int, line_name: str, out_dir: Path) -> dict:
    """What to say when the key shares of the packs ``lost`` (exported, registered) could not
    be printed: no line can open them, so revoke them and export their serials again."""
    one = len(lost) == 1
    revoke = "; ".join(f"`{wuma_command('pack', 'revoke', p.id)}`" for p in lost)
    again = wuma_command("pack", "export", str(batch_id), "--line", line_name, "--range",
                         f"{lost[0].start}:{lost[-1].stop}", "--parts", str(len(lost)), "--split-key",
                         "-o", str(out_dir))
    return {
        "done": f"pack{'' if one else 's'} {', '.join(p.id for p in lost)} {'was' if one else 'were'} "
                "exported and registered",
        "lost": "its key share" if one else "their key shares",
        "then": f"no line can open {'it' if one else 'them'}, so revoke {'it' if one else 'them'} ({revoke}), "
                f"delete {', '.join(str(p.path) for p in lost)} and export again (`{again}`)",
    }


#: The largest key share file read: a share is 55 letters and digits (a few hundred bytes
#: as Notepad saves them in full-width forms, with dashes and a line break).
_MAX_SHARE_FILE = 4096
_SHARE_SIZE = "a key share, which is 55 letters and digits"


def _share_text(share: str | None, share_file: Path | None) -> str | None:
    """The key share from --share-file (a file, or - for stdin) or --share."""
    # APPSEC: --share-file keeps the share out of `ps` and shell history.
    if share is not None and share_file is not None:
        raise click.UsageError("give the key share once: --share-file or --share, not both")
    if share_file is None:
        return share
    # NOTE: a file or a pipe is read as bytes, the way every text file given is (a UTF-8 BOM
    # from Notepad or Excel dropped; UTF-16, Notepad's "Unicode", refused as such, not as
    # "mistyped"), whatever the locale; CRLF is blank space
    if str(share_file) != "-":
        text = decode_text(read_input(share_file, str(share_file), _MAX_SHARE_FILE, _SHARE_SIZE), str(share_file))
    elif stdin_binary("give --share-file a file name, or the share as input (`< share.txt`)").isatty():
        text = click.prompt("key share", hide_input=True, err=True)
    else:
        text = decode_text(read_input("-", "stdin", _MAX_SHARE_FILE, _SHARE_SIZE), "stdin")
    if not text.strip():
        where = "stdin" if str(share_file) == "-" else str(share_file)
        raise click.ClickException(f"no key share in {where}: it holds nothing but blanks")
    return text.strip()


@pack.command("open")
@click.argument("pack_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--key",
    "key_dir",
    required=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="The line's key folder (from `wuma line keygen`).",
)
@click.option(
    "--share-file",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default=None,
    help="File holding the key share of a --split-key pack, or - to read it from stdin "
    "(typed without echo at a terminal). Safer than --share.",
)
@click.option(
    "--share",
    default=None,
    help="Key share text. Visible to other users (ps) and kept in shell history: "
    "prefer --share-file.",
)
@click.option(
    "--brand-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help=f"Brand key file (default: <key folder>/{BRAND_KEYS_FILE}).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="File to write, or - for stdout.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["csv", "jsonl"]),
    default="csv",
    show_default=True,
    help="CSV (serial, one column per role) or JSON lines.",
)
@click.option("--url", is_flag=True, help="CSV: write the URL form of each code.")
@click.option(
    "--server",
    envvar="WUMA_PACK_SERVER",
    default=None,
    help="The brand's pack server: ask it first whether this pack may be printed "
    "(refused if revoked, its codes voided since, or not issued to this line). "
    "Default: $WUMA_PACK_SERVER.",
)
@click.option(
    "--receipt",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the signed open report here, for the brand (`wuma pack report`), with its proof of "
    "decryption: that the line holds the pack's data key and every code of it.",
)
@library_errors
def pack_open(
    pack_file, key_dir, share_file, share, brand_key, output, output_format, url, server, receipt
):
    """Check a pack's signature and line, then decrypt its codes for the printer.

    Nothing is written unless the whole pack checks (to stdout: the signature is checked
    over the whole file before the first byte is written).

    With --server (or $WUMA_PACK_SERVER) the brand's pack server is asked first, so a copy
    kept anywhere of a pack revoked or voided since it was pulled is refused; without it
    only `wuma pack pull` sets such copies aside, in its own folder.

    Example: wuma pack open L1-b1-0-1000-<pack id>.wpk --key /etc/wuma-line --share-file share.txt -o codes.csv
    """
    target = stdout_binary() if output == "-" else Path(output)
    keys = LineKeys.load(key_dir)
    brand = load_brand_keys(brand_key or key_dir / BRAND_KEYS_FILE)
    # NOTE: with a server, the library asks it and opens only the bytes it lists
    got = open_pack_to_file(pack_file, keys, brand, target, receipt=receipt,
                            share=_share_text(share, share_file), output_format=output_format,
                            url=url, server=server or None)
    click.echo(
        f"opened pack {got.id}: {got.count:,} units of batch {got.batch} "
        f"(serials {got.start}:{got.stop}) to {output}",
        err=True,
    )


@pack.command("list")
@click.option("--batch", "batch_id", type=int, default=None, help="Only this batch.")
@click.option("--line", "line_name", default=None, help="Only this line.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_data
def pack_list(data, batch_id, line_name, as_json):
    """Issued packs with their downloads (whole; cut off), open reports and revocation,
    and packs an export did not put in place (failed, or cut off), with what to do.

    Example: wuma pack list --line L1
    """
    for p in PackRegistry(data).list(batch=batch_id, line=line_name):
        kinds = [e["kind"] for e in p["events"]]
        cut = f" (and {kinds.count('download_cut')} cut off)" if "download_cut" in kinds else ""
        emit(
            p,
            as_json,
            f"pack {p['id']}: batch {p['batch']} {p['start']}:{p['stop']} "
            f"({p['count']:,}) line {p['line']} {_pack_state(p)}; downloads "
            f"{kinds.count('download')}{cut}, opens {kinds.count('opened')}",
        )


def _pack_state(p: dict) -> str:
    """A listed pack's state, and what to do about it, for `pack list`: why it is withheld
    in the library's words (its ``withheld_causes``: engine.packs.withheld_causes), then
    what the brand does."""
    causes = dict(p["withheld_causes"])
    state = "issued" if not causes else f"withheld: {p['withheld_reason']}"
    revoke = f"revoke it (`{wuma_command('pack', 'revoke', p['id'])}`"
    # NOTE: a file left by a killed export opens without --server: with its range exported
    # again, a line given it by hand would print those serials twice
    left = (f"; its file is still at {p['path']}: delete it" if p["file_present"] else "")
    if "export_failed" in causes:
        return f"{state} (a line holding a copy sets it aside){left}; {_export_again(p)}"
    if "pack_not_placed" in causes:
        if p["revoked_at"]:
            return f"{state}{left}; {_export_again(p)}"
        return (f"{state}; if no export is running, {revoke}, which deletes its file) and export its "
                "serials again")
    if "signer_revoked" in causes:
        state += "; lines given the new brand-keys.json refuse it: " + (
            _export_again(p, " with the new key") if p["revoked_at"]
            else f"{revoke}) and export its range again with the new key")
    elif "codes_voided" in causes and not p["revoked_at"]:
        state += "; do not print it"
    if not p["file_present"]:
        state += (" (its file is not at the export path: moved, deleted, or its export, by an earlier release, was "
                  "cut off; revoke it and export again if lost)")
    return state


def _export_again(p: dict, how: str = "") -> str:
    """What to export again of a pack that no longer holds its serials: the ranges no pack
    exported since holds (``to_export_again``), or nothing."""
    if not p["to_export_again"]:
        return "its serials are in pack(s) exported since: nothing to export again"
    ranges = ", ".join(f"{a}:{b}" for a, b in p["to_export_again"])
    return f"export serials {ranges} of batch {p['batch']} again{how}"


@pack.command("revoke")
@click.argument("pack_ids", metavar="PACK_ID...", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_data
def pack_revoke(data, pack_ids, as_json):
    """Revoke packs (no longer served; kept in the audit): all of them at once, or none if
    an id is no pack (each such id named). A pack never put in place loses its file too.

    Example: wuma pack revoke 42ca2e9431e2e6ea0c5b5302ada82193 9f1c0e5d2b7a4c3e8d6f0a1b2c3d4e5f
    """
    for p in PackRegistry(data).revoke_all(list(pack_ids)):
        emit(p, as_json, f"pack {p['id']} revoked")


@pack.command("report")
@click.argument("receipt", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def pack_report(data, receipt, as_json):
    """Record a line's open report (the receipt written by `wuma pack open --receipt`).

    A receipt must carry a proof of decryption, which this release's `pack open` writes:
    it shows that the line holds the pack's data key and every code of it (not that these
    codes came from this file: a line holding them from a revoked pack of the same serials
    makes it too). One without it (an earlier release's, or one only signed) is refused,
    nothing recorded. Packs exported by an earlier release have nothing to
    check a proof against: their opens are recorded as the line's word, and said so.

    Example: wuma pack report codes.receipt.json
    """
    p = PackRegistry(data).record_open(read_input(receipt, str(receipt), _MAX_KEY_FILE,
                                                  "an open receipt, a few hundred bytes"))
    if p["already_recorded"]:
        text = f"already recorded: this open of pack {p['id']} by line {p['line']}"
    else:
        text = f"recorded open of pack {p['id']} by line {p['line']}"
    if p["open_proof"] == "unchecked":
        text += (f"\n  pack {p['id']} was exported by an earlier release: its open is the line key's word "
                 "(the export kept nothing to check a proof of decryption against)")
    if p["withheld_reason"] is not None:  # NOTE: the library's sentences (withheld_causes)
        text += (f"\n  pack {p['id']} is withheld ({p['withheld_reason']}): its codes should not have "
                 "been printed")
    emit(p, as_json, text)


#: Seconds a stopping or reloading pack server lets its downloads finish (a 400 MB pack over
#: a 2 MB/s factory link takes 200 s; a reload cut every download over 10 s).
PACK_GRACEFUL_S = 300


@pack.command("serve")
@server_options("127.0.0.1:8081",
                "Address to listen on (HOST:PORT, [IPv6]:PORT, or unix:PATH behind a local proxy); "
                "lines reach it through a TLS proxy.",
                "Worker processes (default: one per core); each serves many lines at once.")
@click.pass_context
def pack_serve(ctx, bind, workers, timeout):
    """Run the pull server for print lines (`wuma pack pull`, `pack open --server`) under
    gunicorn with Wuma's config (engine/gunicorn_conf.py): gevent workers, so a slow line's
    download neither runs into the worker timeout nor holds up the other lines; its log on
    stderr is JSON lines.

    Example: wuma --data ./wuma-data pack serve --bind 127.0.0.1:8081 --workers 2
    """
    run_gunicorn(ctx, "engine.http_packs:app_from_env()",
                 {"WUMA_BIND": bind, "WUMA_WORKERS": workers, "WUMA_TIMEOUT": timeout,
                  "WUMA_WORKER_CLASS": "gevent", "WUMA_GRACEFUL_TIMEOUT": PACK_GRACEFUL_S})


@pack.command("pull")
@click.option(
    "--line",
    "key_dir",
    required=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="The line's key folder (signs the requests).",
)
@click.option(
    "--server",
    envvar="WUMA_PACK_SERVER",
    required=True,
    help="The brand's pack server, e.g. https://packs.example.cn (default: $WUMA_PACK_SERVER)",
)
@click.option(
    "-o",
    "--output",
    "out_dir",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for downloaded packs.",
)
@library_errors
def pack_pull(key_dir, server, out_dir):
    """Download the packs issued to this line (requests signed with the line's key).

    Each pack is checked against the server's listing (size and SHA-256) before it gets
    its name; one that arrives cut off or damaged is not kept, the others are still
    pulled, and the command then fails naming it (pull again). A local write error (disk
    full, a file-size limit) stops the pull at once, naming the file; the packs saved
    before are listed. A pack already in the folder is skipped if it is whole, else
    downloaded again. Packs revoked, with codes voided since the export, or of an export
    that failed or has not put them in place, are not served; a copy of one already in the
    folder is renamed FILE.withheld (never deleted), named with why, and the command fails:
    do not print it. Open the packs with `wuma pack open`.

    Example: wuma pack pull --line /etc/wuma-line --server https://packs.example.cn -o packs/
    """
    from engine.http_packs import PullIncomplete, pull_packs

    def withheld(found) -> None:
        for w in found:
            click.echo(
                f"pack {w.id} withheld: {w.reason}; its local copy renamed to {w.renamed}: "
                "do not print it",
                err=True,
            )

    try:
        got = pull_packs(LineKeys.load(key_dir), server, out_dir)
    except PullIncomplete as e:
        for p in e.pulled:
            click.echo(str(p))
        click.echo(f"downloaded {len(e.pulled)} pack(s) to {out_dir}", err=True)
        withheld(e.withheld)
        raise
    for p in got:
        click.echo(str(p))
    click.echo(f"downloaded {len(got)} pack(s) to {out_dir}", err=True)
    if got.withheld:
        withheld(got.withheld)
        # NOTE: a line must not silently keep printable voided codes
        raise click.ClickException(
            f"{len(got.withheld)} local pack copy(ies) withheld by the server, renamed: "
            "do not print them"
        )

"""``wuma aggregate ...``, ``void``, ``activate``, ``distributor``, ``ship``/``receive``/
``return``/``transfer``, ``trace`` and ``epcis export``: thin wrappers over
:class:`engine.aggregation.Aggregation`.
"""

from __future__ import annotations

import json

import click

from cli.main import emit, pass_data, stdout_binary
from engine.aggregation import Aggregation
from engine.chinatime import china_time
from engine.files import private_output
from engine.ingest import IngestReport

__all__ = ["register"]


def _agg(data) -> Aggregation:
    return Aggregation(data)


def _unit_text(d: dict) -> str:
    code = f" {d['code']}" if d.get("code") else ""
    return f"{d['level']} {d['batch']}:{d['serial']}{code}"


def _parse_range(text: str) -> tuple[int, int, int]:
    try:
        b, a, z = (int(x) for x in text.split(":"))
    except ValueError:
        raise click.BadParameter(
            f"range must look like BATCH:A:B (B exclusive), got {text!r}") from None
    return b, a, z


# -- aggregate ---------------------------------------------------------------------------------
@click.group()
def aggregate():
    """Links between caps, cases and pallets (line collection and warehouse operations).

    Example: wuma aggregate load line-7.csv
    """


@aggregate.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--skip-bad", is_flag=True,
              help="Load the good records; write bad ones to --reject-file.")
@click.option("--reject-file", type=click.Path(dir_okay=False), default=None,
              help="Where --skip-bad writes bad records (default: FILE.rejects).")
@click.option("--again", is_flag=True,
              help="Load FILE even if a file with the same content was loaded before "
                   "(it puts back units unpacked from its parents since, and refuses its "
                   "records of units moved since).")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default=None,
              help="Input format (default: by extension / content).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def aggregate_load(data, file, skip_bad, reject_file, again, fmt, as_json):
    """Load a line-collection file: one record per line, a parent code then its children.

    \b
    CSV:        PARENT,CHILD,CHILD,...   (codes bare or as URLs)
    JSON lines: {"parent": "PARENT", "children": ["CHILD", ...]}

    Every record is checked; by default one bad record means nothing is loaded. A file
    loaded before (the same content) is not loaded again: the command names that load and
    does nothing, so a re-run never undoes warehouse work (--again loads it anyway).
    A run with no bad record removes the reject file an earlier run left. Exit status 1
    when nothing is loaded: a bad record (without --skip-bad), every record bad, or no
    record at all (a re-run recognised exits 0).

    Example: wuma aggregate load line-7.csv --skip-bad --reject-file line-7.rejects
    """
    if reject_file and not skip_bad:
        raise click.UsageError("--reject-file only makes sense with --skip-bad")
    if skip_bad and not reject_file:
        reject_file = file + ".rejects"
    r = _agg(data).load(file, skip_bad=skip_bad, reject_file=reject_file, fmt=fmt, again=again)
    if as_json:
        emit(r.to_dict(), True)
    else:
        for b in r.bad[:50]:
            click.echo(f"line {b.line}: {b.reason}", err=True)
        if len(r.bad) > 50:
            click.echo(f"... {len(r.bad) - 50} more bad records", err=True)
        if r.already_loaded is not None:
            click.echo(_already_loaded_text(file, r.already_loaded))
        elif r.loaded and r.records > len(r.bad):
            click.echo(_loaded_text(r))
    refusal = _load_refusal(file, r)
    if refusal:
        raise click.ClickException(refusal)


def _loaded_text(r: IngestReport) -> str:
    what = (f"{r.records - len(r.bad):,} of {r.records:,} records" if r.bad
            else f"{r.records:,} records")
    extra = (f"; {len(r.bad):,} bad record{'s' if len(r.bad) != 1 else ''} not loaded, "
             f"written to {r.rejected_to}" if r.bad else "")
    if r.rejects_removed:
        extra += f"; removed {r.rejects_removed}, the reject file of an earlier run"
    return (f"loaded {what}: {r.links_added:,} links added, "
            f"{r.links_existing:,} already present{extra}")


def _already_loaded_text(file: str, e: dict) -> str:
    rejected = f", {e['rejected']:,} rejected" if e.get("rejected") else ""
    return (f"already loaded: {file} holds what the load of event {e['event_id']} took "
            f"({e['source']}, {china_time(e['time'])}: {e['records']:,} records{rejected}, "
            f"{e['links']:,} links added); nothing done. Loaded again, it would put back the "
            "units unpacked since and refuse the records of units moved since: give --again "
            "to load it anyway")


def _load_refusal(file: str, r: IngestReport) -> str | None:
    """Why nothing was loaded (exit status 1), or None."""
    if not r.loaded:
        return f"{len(r.bad)} bad records; nothing loaded (fix them, or use --skip-bad)"
    if r.already_loaded is not None:
        return None
    if not r.records:
        return (f"no records in {file}: it holds only blank lines, comments or a header; "
                "nothing loaded")
    if r.records == len(r.bad):
        return (f"all {r.records:,} records are bad; nothing loaded (they are written to "
                f"{r.rejected_to})")
    return None


@aggregate.command("unpack")
@click.argument("code")
@click.option("--child", "children", multiple=True, help="Only these children (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def aggregate_unpack(data, code, children, as_json):
    """Unpack a case / split a pallet: take its children (or the given ones) out.

    Example: wuma aggregate unpack 1E2188DJ7RRRRHRQE9TH --child 12HHXSSJB8HW6G87W5AW
    """
    kids = _agg(data).unpack(code, list(children) or None)
    emit({"unpacked": kids}, as_json, f"unpacked {len(kids)} units")


@aggregate.command("move")
@click.argument("codes", nargs=-1, required=True)
@click.option("--to", "to", required=True, help="The new parent's code.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def aggregate_move(data, codes, to, as_json):
    """Move units into another parent (from wherever they are).

    A unit goes into a parent in the same hands (its distributor's, or the brand's when it
    was never shipped or was returned) or into an empty one; otherwise nothing is moved and
    the error says what to record first (ship, transfer or return).

    Example: wuma aggregate move 1E2188DJ7RRRRHRQE9TH --to 19WTV3ZKFM6FT309KHY6
    """
    moved = _agg(data).move(list(codes), to)
    emit({"moved": moved}, as_json, f"moved {len(moved)} units")


@aggregate.command("replace")
@click.argument("old")
@click.argument("new")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def aggregate_replace(data, old, new, as_json):
    """Replace a whole unit (the item swapped): every code of OLD is voided (its inner
    code too) and NEW takes its place, parent, children, activation and shipment (history
    kept). For one torn label of an item that stays, use `aggregate relabel`.

    Example: wuma aggregate replace 1E2188DJ7RRRRHRQE9TH 1QK3W9E0V5B8D2FJ4M6N
    """
    eid = _agg(data).replace(old, new)
    emit({"event_id": eid}, as_json, f"replaced (event {eid})")


@aggregate.command("relabel")
@click.argument("old")
@click.argument("new")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def aggregate_relabel(data, old, new, as_json):
    """Replace one damaged label of a unit (标签替换): NEW, a fresh code of the same role,
    stands for the unit; OLD answers voided. The unit keeps its other code (a case's or
    cap's inner one), links, activation and shipment.

    Example: wuma aggregate relabel 1E2188DJ7RRRRHRQE9TH 1QK3W9E0V5B8D2FJ4M6N
    """
    eid = _agg(data).relabel(old, new)
    emit({"event_id": eid}, as_json, f"relabelled (event {eid})")


# -- void / activate ---------------------------------------------------------------------------
@click.command("void")
@click.argument("codes", nargs=-1)
@click.option("--batch", "batch_id", type=int, default=None, help="Void a whole batch.")
@click.option("--range", "serial_range", default=None, help="Void BATCH:A:B (B exclusive).")
@click.option("--reason", default="", help="Why (kept with the event).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def void(data, codes, batch_id, serial_range, reason, as_json):
    """Void codes, a serial range or a batch (labels destroyed, recalls).

    Example: wuma void --range 1:0:1000 --reason "print run smeared"
    """
    if not codes and batch_id is None and serial_range is None:
        raise click.UsageError("give codes, --batch or --range")
    rng = _parse_range(serial_range) if serial_range else None
    n = _agg(data).void(list(codes), batch=batch_id, serial_range=rng, reason=reason)
    emit({"voided": n}, as_json, f"voided {n:,} units")


@click.command("activate")
@click.option("--sku", required=True, help="Product SKU.")
@click.option("--name", required=True, help="Product name.")
@click.option("--gtin", default=None, help="GTIN-8/12/13/14 (check digit is verified).")
@click.option("--lot", required=True, help="Production lot.")
@click.option("--date", "production_date", required=True, help="Production date YYYY-MM-DD.")
@click.option("--line", "line_name", default="", help="Production line.")
@click.option("--batch", "batch_id", type=int, default=None, help="Activate a whole batch.")
@click.option("--range", "serial_range", default=None, help="Activate BATCH:A:B (B exclusive).")
@click.option("--pallet", "pallets", multiple=True,
              help="Activate this pallet and everything on it (a pallet's code; repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def activate(data, sku, name, gtin, lot, production_date, line_name, batch_id, serial_range,
             pallets, as_json):
    """Assign value (赋值): bind product, lot, date and line to a batch, range or pallets.

    Example: wuma activate --sku TEA-500 --name "Green tea" --lot L1 --date 2026-11-21 --pallet P
    """
    if sum(x is not None and x != () for x in (batch_id, serial_range, pallets)) != 1:
        raise click.UsageError("give exactly one of --batch, --range, --pallet")
    rng = _parse_range(serial_range) if serial_range else None
    rec = _agg(data).activate(sku=sku, name=name, gtin=gtin, lot=lot,
                              production_date=production_date, line=line_name, batch=batch_id,
                              serial_range=rng, pallets=list(pallets))
    emit(rec, as_json, f"activation {rec['id']}: {rec['units']:,} units are {sku} lot {lot}")


# -- distributors and shipping -----------------------------------------------------------------
@click.group()
def distributor():
    """Distributors and their territories (region code prefixes).

    Example: wuma distributor add gz-01 --name "Guangzhou Trading" --region 4401
    """


@distributor.command("add")
@click.argument("ident")
@click.option("--name", default="", help="Display name.")
@click.option("--region", "regions", multiple=True, required=True,
              help="Region code prefix in the territory, e.g. 4401 (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def distributor_add(data, ident, name, regions, as_json):
    """Add a distributor with a territory.

    Example: wuma distributor add gz-01 --name "Guangzhou Trading" --region 4401 --region 4406
    """
    rec = _agg(data).add_distributor(ident, name, list(regions))
    emit(rec, as_json, f"distributor {rec['id']} ({rec['name']}): {', '.join(rec['territory'])}")


@distributor.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_data
def distributor_list(data, as_json):
    """List distributors.

    Example: wuma distributor list --json
    """
    for rec in _agg(data).distributors():
        emit(rec, as_json, f"{rec['id']}\t{rec['name']}\t{', '.join(rec['territory'])}")


def _taken_out_text(agg: Aggregation, taken: list) -> str:
    """The units a ship, transfer or return took out of their parents (``taken_out``: the
    parent was not with the same hands), for a person."""
    if not taken:
        return ""
    return "\n" + "\n".join(f"  taken out of {_unit_text(agg.describe(p))}: "
                             f"{_unit_text(agg.describe(k))}" for k, p in taken)


def _shipping_command(kind: str, doc: str):
    @click.argument("codes", nargs=-1, required=True)
    @click.option("--to", "to", required=True, help="Distributor id.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @pass_data
    def cmd(data, codes, to, as_json):
        agg = _agg(data)
        rec = (agg.ship if kind == "ship" else agg.transfer)(list(codes), to)
        emit(rec, as_json, f"shipment {rec['id']}: {len(rec['units'])} units (and all below) "
                           f"to {to}" + _taken_out_text(agg, rec.get("taken_out")))

    cmd.__doc__ = doc
    return click.command(kind)(cmd)


ship = _shipping_command("ship", """Ship units, and every unit below them, to a distributor.

    A unit shipped without its parent is taken out of it (an unpack is recorded). A pallet
    rebuilt from cases already with the distributor takes it.

    Example: wuma ship 19WTV3ZKFM6FT309KHY6 --to gz-01
    """)
transfer = _shipping_command("transfer", """Record shipped units passing to another distributor.

    A case passed on without its pallet is taken out of it (an unpack is recorded). A
    rebuilt pallet passes with its cases when they are all with one distributor.

    Example: wuma transfer 1E2188DJ7RRRRHRQE9TH --to fs-02
    """)


@click.command("receive")
@click.argument("codes", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def receive(data, codes, as_json):
    """Record that a distributor received shipped units.

    Example: wuma receive 19WTV3ZKFM6FT309KHY6
    """
    eid = _agg(data).receive(list(codes))
    emit({"event_id": eid}, as_json, f"received (event {eid})")


@click.command("return")
@click.argument("codes", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def return_(data, codes, as_json):
    """Record units returned to the brand (they leave the distributor, and a parent that
    stays with it: an unpack is recorded).

    Example: wuma return 1E2188DJ7RRRRHRQE9TH
    """
    agg = _agg(data)
    eid = agg.return_goods(list(codes))
    taken = agg.event(eid).get("taken_out")
    emit({"event_id": eid, **({"taken_out": taken} if taken else {})}, as_json,
         f"returned (event {eid})" + _taken_out_text(agg, taken))


# -- trace / epcis -----------------------------------------------------------------------------
@click.command("trace")
@click.argument("code")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def trace(data, code, as_json):
    """Everything about a code: product, ancestors, children, shipment, history.

    Example: wuma trace 12HHXSSJB8HW6G87W5AW --json
    """
    t = _agg(data).trace(code, render=True)
    if as_json:
        emit(t, True)
        return
    u = t["unit"]
    lines = [f"{u['role']} {u['code']} ({u['level']} {u['batch']}:{u['serial']})"
             + (" VOIDED" if t["voided"] else "") + ("" if t["active"] else " not active")]
    if t["product"]:
        p = t["product"]
        lines.append(f"  product {p['sku']} {p['name']}, lot {p['lot']}, "
                     f"made {p['production_date']}"
                     + (f" on {p['line']}" if p["line"] else "")
                     + (f", GTIN {p['gtin']}" if p["gtin"] else ""))
    for a in t["ancestors"]:
        lines.append(f"  in {_unit_text(a)}")
    if t["children"]:
        lines.append(f"  holds {len(t['children'])}: "
                     + ", ".join(_unit_text(c) for c in t["children"][:5])
                     + (" ..." if len(t["children"]) > 5 else ""))
    if t["distributor"]:
        d = t["distributor"]
        lines.append(f"  shipped to {d['id']} ({d['name']}, territory {', '.join(d['territory'])}) "
                     f"in shipment {t['shipment']['id']}")
    for h in t["history"]:
        lines.append(f"  event {h['id']} {h['type']}")
    click.echo("\n".join(lines))


@click.group()
def epcis():
    """GS1 EPCIS 2.0 interchange.

    Example: wuma epcis export -o events.jsonld --company-prefix 0614141
    """


@epcis.command("export")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="JSON-LD file to write, or - for stdout.")
@click.option("--company-prefix", default=None, help="GS1 company prefix: pallets as SSCC.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@pass_data
def epcis_export(data, output, company_prefix, as_json):
    """Export the aggregation history as an EPCIS 2.0 JSON-LD document.

    Example: wuma epcis export -o events.jsonld --company-prefix 0614141
    """
    from engine.epcis import export_epcis

    out = stdout_binary() if output == "-" else None  # NOTE: closed: said before the work
    doc = export_epcis(_agg(data), company_prefix=company_prefix)
    text = json.dumps(doc, ensure_ascii=False, indent=1)
    summary = {"events": len(doc["epcisBody"]["eventList"]), "output": output}
    if out is not None:
        out.write((text + "\n").encode())  # NOTE: UTF-8 whatever the locale, as the file is
        out.flush()
        if as_json:  # NOTE: the document is standard output: the summary goes to stderr
            click.echo(json.dumps(summary), err=True)
        return
    # APPSEC: it lists every activated unit's code: 0600, whole or not at all
    with private_output(output, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
    emit(summary, as_json, f"wrote {summary['events']} EPCIS events to {output}")


def register(cli) -> None:
    for cmd in (aggregate, void, activate, distributor, ship, transfer, receive, return_, trace,
                epcis):
        cli.add_command(cmd)

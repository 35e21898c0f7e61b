"""`wuma product`, `wuma pool`, `wuma campaign`, `wuma ledger`, `wuma voucher`: the admin layer
from the command line. Changes are audited as ``cli:<os user>`` (a local operator with
access to the data folder)."""

from __future__ import annotations

import functools
import getpass
import io
import json
import os
import threading
from pathlib import Path

import click

from admin.campaigns import STATUSES
from admin.ledger import KINDS
from admin.payouts import STATES
from admin.pools import UNITS
from admin.service import Admin
from admin.tokens import ROLES as ADMIN_ROLES
from cli.main import (
    add_with_token,
    check_output_shown_once,
    emit,
    emit_shown_once,
    pass_data,
    read_input,
    stdout_binary,
    wuma_command,
)
from engine.files import decode_text
from engine.ids import is_digits


def cli_user() -> str:
    """Who a command-line change is by, in the audit log: ``cli:<os user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (containers)
        return "cli:unknown"


def pass_admin(fn):
    """Open the data folder and its admin layer; pass ``Admin`` first."""

    @pass_data
    @functools.wraps(fn)
    def wrapper(data, *args, **kwargs):
        admin = Admin(data)
        try:
            return fn(admin, *args, **kwargs)
        finally:
            admin.close()

    return wrapper


def _yuan(amount: int, unit: str) -> str:
    return f"{amount / 100:.2f} yuan" if unit == "cash" else f"{amount} points"


# -- products ------------------------------------------------------------------------------
@click.group()
def product():
    """Products (master data): SKU, name, GTIN.

    Example: wuma product add BJ-500 --name "Baijiu 500ml" --gtin 06901234567892
    """


@product.command("add")
@click.argument("sku")
@click.option("--name", required=True, help="Product name.")
@click.option("--gtin", default=None, help="GTIN-8/12/13/14 with its check digit.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_admin
def product_add(admin, sku, name, gtin, as_json):
    """Add a product.

    Example: wuma product add GT-500 --name "Green tea 500ml"
    """
    p = admin.products.add(sku, name, gtin=gtin, who=cli_user())
    emit(p.to_dict(), as_json, f"product {p.sku} added")


@product.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_admin
def product_list(admin, as_json):
    """List products.

    Example: wuma product list --json
    """
    for p in admin.products.list():
        emit(p.to_dict(), as_json, f"{p.sku}\t{p.name}\t{p.gtin or '-'}")


# -- pools ---------------------------------------------------------------------------------
@click.group()
def pool():
    """Budget pools (费用池): total, daily and per-region caps; amounts in fen or points.

    Example: wuma pool create summer --total 5000000 --daily 200000
    """


@pool.command("create")
@click.argument("pool_id")
@click.option("--total", type=int, required=True, help="Budget in fen (100 = 1 yuan) or points.")
@click.option("--daily", type=int, default=None, help="Cap per day (China time).")
@click.option("--region-cap", "region_caps", multiple=True, metavar="PREFIX=AMOUNT",
              help="Cap for a region prefix (repeatable); the pool then pays only in those regions.")
@click.option("--unit", type=click.Choice(UNITS), default="cash", show_default=True)
@click.option("--name", default="", help="Display name.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_admin
def pool_create(admin, pool_id, total, daily, region_caps, unit, name, as_json):
    """Create a budget pool.

    Example: wuma pool create gd-summer --total 1000000 --region-cap 44=1000000
    """
    regions = {}
    for item in region_caps:
        prefix, sep, amount = item.partition("=")
        if not sep or not is_digits(amount):
            raise click.BadParameter(f"{item!r}: expected PREFIX=AMOUNT, e.g. 4401=50000",
                                     param_hint="--region-cap")
        if prefix in regions:
            raise click.BadParameter(f"{prefix} is capped twice", param_hint="--region-cap")
        regions[prefix] = int(amount)
    p = admin.pools.create(pool_id, total=total, daily=daily, regions=regions, unit=unit, name=name,
                           who=cli_user())
    emit(p.to_dict(), as_json, f"pool {p.id}: {_yuan(p.total, p.unit)}")


@pool.command("top-up")
@click.argument("pool_id")
@click.argument("amount", type=int)
@click.option("--idempotency-key", default=None,
              help="A key of your own for this top-up: sent again with the same key (a script's retry), "
                   "it is done once.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_admin
def pool_top_up(admin, pool_id, amount, idempotency_key, as_json):
    """Add budget to a pool.

    Example: wuma pool top-up summer 100000 --idempotency-key finance-2026-11-30-1
    """
    p = admin.pools.top_up(pool_id, amount, who=cli_user(), idempotency_key=idempotency_key)
    emit(p.to_dict(), as_json, f"pool {p.id}: total {_yuan(p.total, p.unit)}")


@pool.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_admin
def pool_list(admin, as_json):
    """Pools with what is spent and left.

    Example: wuma pool list
    """
    for p in admin.pools.list():
        s = admin.pools.status(p.id)
        emit(s, as_json, f"{p.id}\tspent {_yuan(s['spent'], p.unit)} of {_yuan(p.total, p.unit)} "
                         f"({s['use_rate']:.1%}); today {_yuan(s['spent_today'], p.unit)}")


@pool.command("show")
@click.argument("pool_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_admin
def pool_show(admin, pool_id, as_json):
    """One pool's burn-down: spend by day and by region.

    Example: wuma pool show summer --json
    """
    s = admin.pools.status(pool_id)
    lines = [f"{s['id']}: spent {_yuan(s['spent'], s['unit'])} of {_yuan(s['total'], s['unit'])}"]
    lines += [f"  {day}\t{_yuan(v, s['unit'])}" for day, v in sorted(s["by_day"].items())]
    lines += [f"  region {r}\t{_yuan(v, s['unit'])}" for r, v in sorted(s["by_region"].items())]
    emit(s, as_json, "\n".join(lines))


# -- campaigns -----------------------------------------------------------------------------
@click.group()
def campaign():
    """Campaigns on batches, serial ranges or products (rules as JSON; see README).

    Example: wuma campaign create summer-draw.json
    """


#: The largest campaign rule read, as the admin API takes one (admin/http.py): a rule on
#: many serial ranges is a few KB.
_MAX_RULE = 256 * 1024


@campaign.command("create")
@click.argument("rule_file", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_admin
def campaign_create(admin, rule_file, as_json):
    """Create a campaign from a JSON rule file (- for standard input); it starts active.

    Example: wuma campaign create open-case.json
    """
    name = "<stdin>" if str(rule_file) == "-" else str(rule_file)
    # NOTE: read as every text file given is: a UTF-8 BOM (Notepad, Excel) dropped, UTF-16
    # and other encodings refused by name, whatever the locale
    text = decode_text(read_input(rule_file, name, _MAX_RULE, "a campaign rule, which is a few KB (the "
                                  "admin API takes 256 KiB at most)"), name)
    try:
        rule = json.loads(text)
    except ValueError as e:
        raise click.ClickException(f"{name}: not valid JSON ({e})") from None
    except RecursionError:
        raise click.ClickException(f"{name}: not a campaign rule (its JSON is nested too deeply)") from None
    c = admin.campaigns.create(rule, who=cli_user())
    emit(c.to_dict(), as_json, f"campaign {c.id} ({c.name}) created, active")


@campaign.command("list")
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only this status.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_admin
def campaign_list(admin, status, as_json):
    """List campaigns.

    Example: wuma campaign list --status active
    """
    for c in admin.campaigns.list(status):
        t = c.rule["trigger"]
        emit(c.to_dict(), as_json, f"{c.id}\t{c.status}\t{c.name}\t{t['actor_role']} scans "
                                   f"{t['code_role']}\tpool {c.pool}")


@campaign.command("show")
@click.argument("campaign_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the output is JSON either way).")
@pass_admin
def campaign_show(admin, campaign_id, as_json):
    """One campaign's rule, as JSON.

    Example: wuma campaign show 3
    """
    emit(admin.campaigns.get(campaign_id).to_dict(), True)


def _status_command(action: str, doc: str):
    @campaign.command(action, help=doc)
    @click.argument("campaign_id", type=int)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @pass_admin
    def command(admin, campaign_id, as_json):
        c = getattr(admin.campaigns, action)(campaign_id, who=cli_user())
        emit(c.to_dict(), as_json, f"campaign {c.id} is {c.status}")

    return command


_status_command("pause", "Pause a campaign: scans stop earning at once, in every worker.\n\n"
                         "Example: wuma campaign pause 3")
_status_command("resume", "Resume a paused campaign.\n\nExample: wuma campaign resume 3")
_status_command("close", "Close a campaign for good (its target may then get a new one).\n\n"
                         "Example: wuma campaign close 3")


# -- ledger and vouchers -------------------------------------------------------------------
@click.group()
def ledger():
    """The append-only reward ledger.

    Example: wuma ledger list --campaign 3
    """


@ledger.command("list")
@click.option("--after", type=int, default=0, help="Entries after this sequence number.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="At most this many (the next page: --after the last seq shown).")
@click.option("--campaign", "campaign_id", type=int, default=None, help="Only this campaign.")
@click.option("--kind", type=click.Choice(KINDS), default=None, help="Only this kind.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_admin
def ledger_list(admin, after, limit, campaign_id, kind, as_json):
    """List ledger entries, oldest first.

    Example: wuma ledger list --kind grant --json
    """
    for e in admin.ledger.entries(after, limit, campaign=campaign_id, kind=kind):
        b = e.get("beneficiary") or {}
        emit(e, as_json, f"{e['seq']}\t{e['kind']}\t{_yuan(e['amount'], e['unit'])}\t"
                         f"{b.get('role', '-')}:{b.get('id', '-')}\tcampaign {e.get('campaign')}\t"
                         f"scan {e.get('scan') or '-'}")


@click.group()
def voucher():
    """N元换购 vouchers: show one, redeem one for a store, expire old ones.

    Example: wuma voucher show VABCD...
    """


@voucher.command("show")
@click.argument("voucher_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the output is JSON either way).")
@pass_admin
def voucher_show(admin, voucher_id, as_json):
    """A voucher's state, as JSON.

    Example: wuma voucher show V7K2M9QX4T1B8N3R5W6Y0
    """
    emit(admin.rewards.voucher(voucher_id), True)


@voucher.command("redeem")
@click.argument("voucher_id")
@click.option("--store", "store_id", required=True, help="The store account redeeming it.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_admin
def voucher_redeem(admin, voucher_id, store_id, as_json):
    """Redeem (核销) a consumer's voucher for a store (the store's own path is POST
    /v1/vouchers/redeem), audited as by you. A revoked store account is refused, as its
    token is on that path.

    Example: wuma voucher redeem V7K2M9QX4T1B8N3R5W6Y0 --store s-1
    """
    v = admin.rewards.redeem(voucher_id, admin.data.accounts.get(store_id), who=cli_user())
    emit(v, as_json, f"voucher {v['id']} was already redeemed by {v['redeemed_by']}: nothing credited again"
         if v.get("repeat") else f"voucher {v['id']} redeemed by {v['redeemed_by']}: {v['value'] / 100:.2f} yuan credited")


@voucher.command("sweep")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_admin
def voucher_sweep(admin, as_json):
    """Expire vouchers and locked rewards past their time, returning their budget.

    Example: wuma voucher sweep
    """
    got = admin.sweep(who=cli_user())
    emit(got, as_json, f"{got['vouchers_expired']} vouchers and {got['locks_expired']} locked rewards expired")


@ledger.command("reverse")
@click.argument("seq", type=int)
@click.option("--reason", required=True, help="Why (kept in the ledger and the audit log).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_admin
def ledger_reverse(admin, seq, reason, as_json):
    """Reverse a payable entry never sent to the payment system (budget returned).

    Example: wuma ledger reverse 42 --reason "test scan in the warehouse"
    """
    e = admin.reverse(seq, reason=reason, who=cli_user())
    emit(e, as_json, f"entry {seq} reversed by entry {e['seq']}; {_yuan(e['amount'], e['unit'])} back in pool {e['pool']}")


@ledger.command("export")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write (written whole or not at all, mode 0600), or - for standard output.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True)
@click.option("--after", type=int, default=0, help="Entries after this sequence number.")
@click.option("--state", type=click.Choice(STATES), default=None, help="Only payouts in this state.")
@pass_admin
def ledger_export(admin, output, fmt, after, state):
    """Export payable entries with their payout state, for a payment system that imports files.

    JSON lines hold every value verbatim (import those). CSV is for a spreadsheet: a text
    cell that would start a formula (=, +, -, @, tab, CR) or starts with ' gets a ' in front.

    Example: wuma ledger export -o payouts.csv --state pending
    """
    if str(output) == "-":
        out = io.TextIOWrapper(stdout_binary(), encoding="utf-8", newline="", write_through=True)
        try:
            n = admin.payouts.write_export(out, fmt, after=after, state=state)
        finally:
            out.detach()
        click.echo(f"{n} payable entries written", err=True)
        return
    n = admin.payouts.export(output, fmt, after=after, state=state)
    click.echo(f"{n} payable entries written to {output}")


# -- payouts -------------------------------------------------------------------------------
@click.group()
def payout():
    """Deliver payable ledger entries to the payment system's webhook (at least once).

    Example: WUMA_PAYOUT_SECRET=... wuma payout deliver --url https://pay.example.cn/wuma
    """


def _secret(secret_file: Path | None) -> str:
    # APPSEC: never a command-line argument (visible in ps and shell history).
    if secret_file is not None:
        # NOTE: read as every text file given is: Notepad's BOM is no part of the HMAC key
        # (kept, every delivery was refused by the receiver), UTF-16 refused by name
        name = str(secret_file)
        secret = decode_text(read_input(secret_file, name, 4096, "an HMAC secret, a line of tens of "
                                        "characters"), name).strip()
        if not secret:
            raise click.ClickException(f"no secret in {name}: it holds nothing but blanks")
        return secret
    secret = os.environ.get("WUMA_PAYOUT_SECRET")
    if not secret:
        raise click.ClickException("set WUMA_PAYOUT_SECRET or pass --secret-file (the webhook's HMAC secret)")
    return secret


@payout.command("deliver")
@click.option("--url", required=True, help="The payment system's webhook (http or https).")
@click.option("--secret-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="File holding the HMAC secret (else $WUMA_PAYOUT_SECRET).")
@click.option("--once", is_flag=True, help="One pass, then exit (else run until interrupted).")
@click.option("--limit", type=int, default=100, show_default=True, help="Entries per pass.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_admin
def payout_deliver(admin, url, secret_file, once, limit, as_json):
    """Send pending payouts, signed, with idempotency keys; paid only on the receiver's 2xx.

    Example: wuma payout deliver --url https://pay.example.cn/wuma --once
    """
    secret = _secret(secret_file)
    if once:
        got = admin.payouts.deliver_once(url, secret, limit=limit)
        emit(got, as_json, ", ".join(f"{k} {v}" for k, v in got.items()))
        return
    stop = threading.Event()
    click.echo("delivering payouts every second; Ctrl-C to stop", err=True)
    try:
        admin.payouts.run(url, secret, stop, limit=limit)
    except KeyboardInterrupt:
        stop.set()


@payout.command("status")
@click.option("--seq", type=int, default=None, help="One ledger entry's payout.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_admin
def payout_status(admin, seq, as_json):
    """Payouts by state (count and amount), or one entry's delivery record.

    Example: wuma payout status --json
    """
    if seq is not None:
        emit(admin.payouts.state(seq), True)
        return
    got = admin.payouts.summary()
    emit(got, as_json, "\n".join(
        f"{state}\t{v['count']} entries\t" + (", ".join(_yuan(a, u) for u, a in v["amount"].items()) or "-")
        for state, v in got.items()))


@payout.command("retry")
@click.argument("seq", type=int)
@pass_admin
def payout_retry(admin, seq):
    """Put a payout the receiver rejected back in the outbox (same idempotency key).

    Example: wuma payout retry 42
    """
    got = admin.payouts.retry(seq, who=cli_user())
    click.echo(f"payout of entry {seq}: {got['state']}")


# -- admin tokens --------------------------------------------------------------------------
@click.group("admin-token")
def admin_token():
    """Tokens for the admin API and page, with a role: admin, operator or viewer.

    Example: wuma admin-token add ops-lead --role admin
    """


@admin_token.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ADMIN_ROLES), help="What the token may do.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_admin
def admin_token_add(admin, name, role, as_json):
    """Make an admin token and print it once (only a hash is kept).

    Example: wuma admin-token add marketing --role operator
    """
    tok, secret = add_with_token(lambda: admin.tokens.add(name, role, who=cli_user()), "admin-token", name)
    emit_shown_once({**tok.to_dict(), "token": secret}, as_json,
                    f"admin token {tok.name} ({tok.role}); shown once: {secret}",
                    done=f"admin token {tok.name} was added", lost="its token",
                    then=f"give it a new one with `{wuma_command('admin-token', 'token', tok.name)}`")


@admin_token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_admin
def admin_token_list(admin, as_json):
    """List admin tokens (never the secrets).

    Example: wuma admin-token list
    """
    for t in admin.tokens.list():
        emit(t.to_dict(), as_json, f"{t.name}\t{t.role}\t{'active' if t.active else 'revoked'}")


@admin_token.command("token")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_admin
def admin_token_token(admin, name, as_json):
    """Give an admin token a new secret, printed once; the old one stops working at once.

    For a token lost or leaked, or never seen (an `admin-token add` whose output was lost:
    names are never reused, so adding it again is refused).

    Example: wuma admin-token token marketing
    """
    check_output_shown_once("the token")
    tok, secret = admin.tokens.reissue(name, who=cli_user())
    emit_shown_once({**tok.to_dict(), "token": secret}, as_json,
                    f"admin token {tok.name} ({tok.role}): new token (shown once; the old one no longer works): "
                    f"{secret}",
                    done=f"admin token {tok.name} was given a new token (the old one no longer works)",
                    lost="the new token", then=f"run `{wuma_command('admin-token', 'token', tok.name)}` again")


@admin_token.command("revoke")
@click.argument("name")
@pass_admin
def admin_token_revoke(admin, name):
    """Revoke an admin token at once.

    Example: wuma admin-token revoke marketing
    """
    t = admin.tokens.revoke(name, who=cli_user())
    click.echo(f"admin token {t.name} revoked")

"""`wuma account` and `wuma bans`: who may scan, and who is blocked."""

from __future__ import annotations

import time

import click

from cli.main import emit, pass_data
from engine.accounts import ACCOUNT_ROLES


@click.group()
def account():
    """Scanning accounts for stores, distributors, sales reps and shop assistants.

    Example: wuma account add store-17 --role store --region 440106 --distributor gz-1
    """


@account.command("add")
@click.argument("account_id")
@click.option("--role", required=True, type=click.Choice(ACCOUNT_ROLES), help="Actor role.")
@click.option("--name", default="", help="Display name.")
@click.option("--region", default=None, help="Administrative division code, e.g. 440106.")
@click.option("--distributor", default=None, help="For a store: the distributor account it buys from.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def account_add(data, account_id, role, name, region, distributor, as_json):
    """Create an account and print its API token once (only a hash is kept).

    Example: wuma account add gz-1 --role distributor --region 4401
    """
    acct, token = data.accounts.add(account_id, role, name=name, region=region, distributor=distributor)
    emit({**acct.to_dict(), "token": token}, as_json,
         f"account {acct.id} ({acct.role}) created; token (shown once): {token}")


@account.command("list")
@click.option("--role", type=click.Choice(ACCOUNT_ROLES), default=None, help="Only this role.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_data
def account_list(data, role, as_json):
    """List accounts (never tokens).

    Example: wuma account list --role store
    """
    for a in data.accounts.list(role):
        state = "active" if a.active else "revoked"
        emit(a.to_dict(), as_json, f"{a.id}\t{a.role}\t{a.region or '-'}\t{a.distributor or '-'}\t{state}")


@account.command("revoke")
@click.argument("account_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def account_revoke(data, account_id, as_json):
    """Revoke an account: its token stops working at once.

    Example: wuma account revoke store-17
    """
    a = data.accounts.revoke(account_id)
    emit(a.to_dict(), as_json, f"account {a.id} revoked")


@click.group()
def bans():
    """Clients banned for enumerating codes (with the evidence).

    Example: wuma bans list
    """


@bans.command("list")
@click.option("--all", "include_inactive", is_flag=True, help="Include expired and lifted bans.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_data
def bans_list(data, include_inactive, as_json):
    """List bans: subject, reason, expiry, number of codes tried.

    Example: wuma bans list --json
    """
    for b in data.abuse.list_bans(include_inactive=include_inactive):
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b.expires_at))
        emit(b.to_dict(), as_json, f"{b.subject}\tuntil {until}\t{len(b.evidence)} codes tried\t{b.reason}")


@bans.command("lift")
@click.argument("subject")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def bans_lift(data, subject, as_json):
    """Lift a ban now (the record is kept).

    Example: wuma bans lift ip:203.0.113.9
    """
    b = data.abuse.lift(subject)
    emit(b.to_dict(), as_json, f"ban on {b.subject} lifted")

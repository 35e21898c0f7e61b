"""`wuma account`, `wuma bans`, `wuma region` and `wuma serve`: who may scan, who is
blocked, where scans happen, and the server."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from cli.admin import cli_user, pass_admin
from cli.main import (
    add_with_token,
    check_output_shown_once,
    emit,
    emit_shown_once,
    library_errors,
    pass_data,
    wuma_command,
)
from engine.abuse import BANS_PAGE
from engine.accounts import ACCOUNT_ROLES
from engine.chinatime import china_time
from engine.errors import BindError
from engine.launch import check_bind, server_environment, server_of
from engine.store import MAX_SEQ


@click.group()
def account():
    """Scanning accounts for stores, distributors, sales reps and shop assistants.

    Example: wuma account add store-17 --role store --region 440106 --distributor gz-01
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

    Example: wuma account add gz-01 --role distributor --region 4401
    """
    acct, token = add_with_token(lambda: data.accounts.add(account_id, role, name=name, region=region,
                                                           distributor=distributor), "account", account_id)
    emit_shown_once({**acct.to_dict(), "token": token}, as_json,
                    f"account {acct.id} ({acct.role}) created; token (shown once): {token}",
                    done=f"account {acct.id} was created", lost="its token",
                    then=f"give it a new one with `{wuma_command('account', 'token', acct.id)}`")


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


@account.command("token")
@click.argument("account_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def account_token(data, account_id, as_json):
    """Give an account a new API token, printed once; the old token stops working at once.

    For a token lost or leaked, or never seen (an `account add` whose output was lost).

    Example: wuma account token store-17
    """
    check_output_shown_once("the token")
    acct, token = data.accounts.reissue(account_id)
    emit_shown_once({**acct.to_dict(), "token": token}, as_json,
                    f"account {acct.id} ({acct.role}): new token (shown once; the old one no longer works): {token}",
                    done=f"account {acct.id} was given a new token (the old one no longer works)",
                    lost="the new token", then=f"run `{wuma_command('account', 'token', acct.id)}` again")


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
@click.option("--all", "include_inactive", is_flag=True, help="Include expired and lifted bans, and the earlier bans of clients banned again.")
@click.option("--limit", type=click.IntRange(min=1), default=BANS_PAGE, show_default=True,
              help="At most this many subjects, by subject (with --all, each with all its bans).")
@click.option("--after", default=None, metavar="SUBJECT",
              help="Only subjects after this one (the next page: the last subject shown).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_data
def bans_list(data, include_inactive, limit, after, as_json):
    """List bans: subject, until when (or when it ended or was lifted), number of codes
    tried, reason; a page of subjects at a time.

    Example: wuma bans list --all --after ip:203.0.113.9
    """
    now = time.time()
    bans_shown = data.abuse.list_bans(now, include_inactive=include_inactive, limit=limit, after=after)
    for b in bans_shown:
        emit(b.to_dict(), as_json,
             f"{b.subject}\t{_ban_state(b, now)}\t{len(b.evidence)} codes tried\t{b.reason}")
    if len({b.subject for b in bans_shown}) == limit:  # NOTE: on stderr: the listing stays as it was
        more = ("bans", "list", *(("--all",) if include_inactive else ()), "--after", bans_shown[-1].subject)
        click.echo(f"{limit:,} subjects shown; there may be more: {wuma_command(*more)}", err=True)


def _ban_state(ban, now: float) -> str:
    """``until``, ``ended`` or ``lifted`` and when (China time): with ``--all`` a subject's
    earlier bans are listed beside the one in force."""
    if ban.lifted_at is not None:
        return f"lifted {china_time(ban.lifted_at)}"
    state = "until" if ban.active(now) else "ended"
    return f"{state} {china_time(ban.expires_at)}"


@bans.command("lift")
@click.argument("subject")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_admin
def bans_lift(admin, subject, as_json):
    """Lift a ban now (the record is kept; the audit log says who lifted it).

    Example: wuma bans lift ip:203.0.113.9
    """
    b = admin.lift_ban(subject, who=cli_user())
    emit(b.to_dict(), as_json, f"ban on {b.subject} lifted")


@click.group()
def region():
    """Division centres, so that a scan with only lat/lng gets its region code.

    Example: wuma region import county-centres.csv
    """


@region.command("import")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def region_import(data, csv_file, as_json):
    """Load code,lat,lng rows (all or none); running servers use them from their next scan.

    Example: wuma region import county-centres.csv
    """
    n = data.regions.import_csv(csv_file)
    emit({"imported": n}, as_json, f"{n} division centres loaded")


@region.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_data
def region_list(data, as_json):
    """The division centres known.

    Example: wuma region list
    """
    for code, lat, lng in data.regions.list():
        emit({"code": code, "lat": lat, "lng": lng}, as_json, f"{code}\t{lat:.5f}\t{lng:.5f}")


@region.command("locate")
@click.argument("lat", type=float)
@click.argument("lng", type=float)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_data
def region_locate(data, lat, lng, as_json):
    """The region a scan at this position is counted in (nearest centre within reach).

    Example: wuma region locate 23.129 113.264
    """
    code = data.regions.locate(lat, lng)
    emit({"lat": lat, "lng": lng, "region": code}, as_json,
         code or f"no division centre within {data.regions.max_km:g} km")


def _bind(port: int):
    """The ``--bind`` callback of a server whose default port is ``port``: the address
    checked before gunicorn starts (:func:`engine.launch.check_bind`)."""
    def check(ctx, param, value: str) -> str:
        try:
            return check_bind(value, port=port)
        except BindError as e:
            raise click.BadParameter(str(e)) from None
    return check


def server_options(bind: str, bind_help: str, workers_help: str = "Worker processes (default: one per core)."):
    """``--bind`` (default ``bind``), ``--workers`` and ``--timeout``: the options of a
    command that runs a server with :func:`run_gunicorn` (`wuma serve`, `wuma pack serve`)."""
    default_port = int(bind.rpartition(":")[2])  # NOTE: a bad --bind's examples use it

    def options(command):
        command = click.option("--timeout", type=click.IntRange(min=1), default=30, show_default=True,
                               help="Seconds a worker may go without a heartbeat before gunicorn "
                                    "restarts it.")(command)
        command = click.option("--workers", type=click.IntRange(min=1), default=None,
                               help=workers_help)(command)
        return click.option("--bind", default=bind, show_default=True, callback=_bind(default_port),
                            help=bind_help)(command)
    return options


def run_gunicorn(ctx: click.Context, app: str, settings: dict[str, object]) -> None:
    """Check the data folder for what ``app``'s server reads, then become gunicorn with
    Wuma's config (engine/gunicorn_conf.py, gevent workers unless ``WUMA_WORKER_CLASS`` says
    otherwise) serving ``app``; ``settings``: the command's settings of the config
    (``WUMA_BIND``, ...), a None left out (the config's default), none inherited from this
    environment (:func:`engine.launch.server_environment`). Never returns."""
    from engine import default_data_path
    from engine.data import check_serving

    path = ctx.find_root().params.get("data") or default_data_path()
    # NOTE: here, with a clear message, not in every worker
    library_errors(check_serving)(path, server_of(app))
    env = server_environment(os.environ, path, settings)
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:engine.gunicorn_conf", app]
    os.execve(sys.executable, argv, env)


@click.command()
@server_options("127.0.0.1:8080",
                "Address to listen on (HOST:PORT, [IPv6]:PORT, or unix:PATH behind a local proxy). "
                "The admin API and page share it: keep it on loopback, behind a TLS proxy.")
@click.option("--worker-class", type=click.Choice(["gevent", "gthread"]), default="gevent",
              show_default=True, help="gunicorn worker class (gevent measured fastest for scans).")
@click.option("--threads", type=click.IntRange(min=1), default=16, show_default=True,
              help="Threads per worker (gthread only).")
@click.option("--keep-alive", "keep_alive", type=click.IntRange(min=0, max=3600), default=5, show_default=True,
              help="Seconds an idle connection is kept open (0: one request a connection). Behind a "
                   "proxy that keeps connections to this server, set it above the proxy's idle timeout.")
@click.option("--worker-connections", type=click.IntRange(min=1, max=1_000_000), default=10_000,
              show_default=True, help="Connections a worker holds at once, idle ones included.")
@click.option("--accept-batch", type=click.IntRange(min=1, max=100), default=8, show_default=True,
              help="Connections a gevent worker accepts at once when several wait (gthread: not used): scans that come "
                   "on new connections then share group commits (1: gunicorn's own, spreading a burst "
                   "of long-lived connections more evenly over the workers).")
@click.pass_context
def serve(ctx, bind, workers, worker_class, threads, timeout, keep_alive, worker_connections, accept_batch):
    """Run the scan API, the admin API and the admin page under gunicorn (config:
    engine/gunicorn_conf.py); its log on stderr is JSON lines.

    Example: wuma --data ./wuma-data serve --bind 127.0.0.1:8080 --workers 2
    """
    # NOTE: a bind off loopback is warned of in the server's JSON log (gunicorn_conf.on_starting)
    run_gunicorn(ctx, "admin.http:app_from_env()", {
        "WUMA_BIND": bind, "WUMA_WORKERS": workers, "WUMA_THREADS": threads, "WUMA_WORKER_CLASS": worker_class,
        "WUMA_TIMEOUT": timeout, "WUMA_KEEPALIVE": keep_alive, "WUMA_WORKER_CONNECTIONS": worker_connections,
        "WUMA_ACCEPT_BATCH": accept_batch})


@click.command()
@click.option("--distributor", default=None, help="Only alerts for this distributor.")
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True,
              help="At most this many, newest first.")
@click.option("--before", type=click.IntRange(min=1, max=MAX_SEQ), default=None,
              help="Only alerts of scans before this sequence number (the next page: the last seq shown).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_data
def alerts(data, distributor, limit, before, as_json):
    """Diversion alerts (窜货): scans outside the shipped-to distributor's territory, newest
    first.

    Example: wuma alerts --distributor gz-01
    """
    from engine.aggregation import split_unit
    from engine.scanlog import ScanLog

    log = ScanLog(data.store)
    for a in log.alerts(distributor, limit, before):
        div = a["diverted"]
        when = china_time(a["at"])
        batch, serial = split_unit(a["unit"])
        emit(a, as_json, f"{when}\tseq {a['seq']}\t{div['distributor']}\tterritory "
                         f"{','.join(div['territory'])}\tscanned in {div['region']}\tunit {batch}:{serial}")
    if not as_json:  # NOTE: the counts per distributor, all time (the list is cut at --limit)
        for dist, n in sorted(log.alert_counts().items()):
            if distributor is None or dist == distributor:
                click.echo(f"{dist}: {n:,} diverted scans in all")

"""Starting a Wuma server under gunicorn with Wuma's config (engine/gunicorn_conf.py):
the scan server (`wuma serve`: the scan API, the admin API and page) and the pack server
(`wuma pack serve`: the pull server for print lines).

What is settled before gunicorn starts: the address it listens on (:func:`check_bind`),
which server an app is (:func:`server_of`, for :func:`engine.data.check_serving`), and
the environment the config reads its settings from (:func:`server_environment`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from pathlib import Path

from engine.errors import BindError
from engine.formats import is_host_name

__all__ = ["SERVER_SETTINGS", "check_bind", "inherited_environment", "server_environment", "server_of"]


def check_bind(address: str, *, port: int = 8080) -> str:
    """``address`` (``HOST:PORT``, ``[IPv6]:PORT`` or ``unix:PATH``) if a server can listen
    on it; BindError says what is wrong, with examples on ``port`` (the server's default).

    NOTE: given to gunicorn unchecked, a port out of range was a traceback in its log, and
    an empty address a server listening on nothing."""
    def bad(why: str) -> BindError:
        return BindError(f"{address!r}: {why}; give HOST:PORT (127.0.0.1:{port}), [IPv6]:PORT "
                         f"([::1]:{port}) or unix:PATH")

    if address.startswith("unix:"):
        path = Path(address[len("unix:"):])
        if not str(path) or str(path) == ".":
            raise bad("no socket path after unix:")
        if not path.parent.is_dir():
            raise bad(f"the folder {path.parent} does not exist")
        return address
    if address.startswith("["):
        host, sep, number = address[1:].partition("]:")
        if not sep:
            raise bad("no port after the bracketed address")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, number = address.rpartition(":")
        if not sep:
            raise bad("no port")
        if ":" in host:
            raise bad("an IPv6 address goes in brackets")
        if not host:
            raise bad("no host before the port")
        if not is_host_name(host.removesuffix(".")):  # NOTE: a fully qualified name ends in a dot
            raise bad(f"{host!r} is no IP address or host name")
    if not (number.isascii() and number.isdigit() and 1 <= int(number) <= 65535):
        raise bad(f"the port must be a number from 1 to 65535, not {number!r}")
    try:
        socket.getaddrinfo(host, int(number), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise bad(f"the host {host} cannot be found ({getattr(e, 'strerror', None) or e})") from None
    return address


def server_of(app: str) -> str:
    """Which server gunicorn's ``app`` (``module:callable``) is, as
    :func:`engine.data.check_serving` names them: ``"packs"`` for the pull server
    (engine.http_packs), ``"scan"`` for any other (admin.http, engine.http_scan: the full
    check)."""
    return "packs" if app.partition(":")[0] == "engine.http_packs" else "scan"


#: The settings of engine/gunicorn_conf.py that `wuma serve` and `wuma pack serve` set from
#: their options (or fix): each command's own, never taken from the environment it runs in.
#: NOTE: a WUMA_WORKERS or WUMA_KEEPALIVE exported for one server was the other's too when
#: its option was not given. The config's other settings (WUMA_ACCESS_LOG,
#: WUMA_BOOT_RETRY, WUMA_RELOAD_CHECK) are no command's options: only the environment
#: gives them, to whichever server it starts.
SERVER_SETTINGS = frozenset({
    "WUMA_BIND", "WUMA_WORKERS", "WUMA_WORKER_CLASS", "WUMA_THREADS", "WUMA_TIMEOUT", "WUMA_GRACEFUL_TIMEOUT",
    "WUMA_KEEPALIVE", "WUMA_WORKER_CONNECTIONS", "WUMA_ACCEPT_BATCH"})


def inherited_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What of ``environ`` a server started by Wuma keeps: all but
    :data:`SERVER_SETTINGS` and ``GUNICORN_CMD_ARGS`` (gunicorn applies it after the config:
    ``--bind 0.0.0.0:8080`` there put a server off loopback past :func:`check_bind`)."""
    return {name: value for name, value in environ.items()
            if name not in SERVER_SETTINGS and name != "GUNICORN_CMD_ARGS"}


def server_environment(environ: Mapping[str, str], data: Path,
                       settings: Mapping[str, object]) -> dict[str, str]:
    """The environment gunicorn runs a server in: :func:`inherited_environment` of
    ``environ``, ``WUMA_DATA`` (the data folder ``data``) and the server's ``settings``
    (some of SERVER_SETTINGS; a None left out: the config's default)."""
    unknown = sorted(set(settings) - SERVER_SETTINGS)
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: no server setting (they are "
                         f"{', '.join(sorted(SERVER_SETTINGS))})")
    env = inherited_environment(environ)
    env["WUMA_DATA"] = str(data)
    env.update({name: str(value) for name, value in settings.items() if value is not None})
    return env

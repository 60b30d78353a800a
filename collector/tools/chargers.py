"""``energy-collector chargers add|list|remove|tag``: the chargers allowed to connect over
OCPP, and the id tags that stand for vehicles."""

from __future__ import annotations

import socket
from collections.abc import Callable

from collector.db.prepare import create_pool, prepare_database
from collector.runtime import run_async
from collector.settings import Settings
from collector.sources.ocpp.chargers import (
    ChargerBook,
    ChargerError,
    check_charger_id,
    describe_row,
)


def run(
    settings: Settings,
    action: str,
    target: str | None,
    *,
    vehicle: str | None = None,
    refuse: bool = False,
    say: Callable[[str], object] = print,
) -> int:
    return run_async(_run(settings, action, target, vehicle=vehicle, refuse=refuse, say=say))


async def _run(
    settings: Settings,
    action: str,
    target: str | None,
    *,
    vehicle: str | None,
    refuse: bool,
    say: Callable[[str], object],
) -> int:
    if action != "list" and not target:
        raise ChargerError(
            f"chargers {action} needs {'an id tag' if action == 'tag' else 'a charger id'}"
        )
    await prepare_database(settings)
    pool = await create_pool(
        settings, min_size=1, max_size=1, application_name="energy-collector-cli"
    )
    book = ChargerBook(pool)
    try:
        if action == "add":
            assert target is not None
            password = await book.add(check_charger_id(target))
            say(f"charger {target} may connect now. Configure it with:")
            say(f"  URL       {charger_url(settings, target)}")
            say(f"  user      {target}   (HTTP Basic: OCPP security profile 1, or 2 over TLS)")
            say(f"  password  {password}")
            say("The password is shown only now; `chargers add` again gives a new one.")
        elif action == "remove":
            assert target is not None
            if not await book.remove(target):
                raise ChargerError(f"no charger {target!r} is registered")
            say(f"charger {target} removed (its sessions and readings stay)")
        elif action == "tag":
            assert target is not None
            await book.tag(target, vehicle, allowed=not refuse)
            what = f"stands for vehicle {vehicle}" if vehicle else "stands for no vehicle"
            say(f"id tag {target} {what}; {'refused' if refuse else 'allowed'} at Authorize")
        else:
            rows = await book.list()
            for row in rows:
                say(describe_row(row))
            if not rows:
                say("no charger is registered (energy-collector chargers add ID)")
    finally:
        await pool.close()
    return 0


def charger_url(settings: Settings, charger_id: str) -> str:
    """The URL a charger is configured with, from ``OCPP_LISTEN`` (this host's name when it
    binds every address)."""
    address = settings.ocpp_address or ("", 9000)
    host = address[0] if address[0] not in ("", "0.0.0.0", "::") else socket.getfqdn()  # noqa: S104
    scheme = "wss" if settings.ocpp_tls_cert else "ws"
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{address[1]}/ocpp/{charger_id}"

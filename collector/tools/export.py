"""``energy-collector export device-days|sessions|site-balance``: figures someone can bill,
as CSV or Parquet, with a manifest beside them (``FILE.manifest.json``: rows, SHA-256,
window, zone)."""

from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path
from typing import BinaryIO

from collector.db.prepare import create_pool, prepare_database
from collector.errors import UsageError
from collector.runtime import run_async
from collector.settings import Settings, known_zone
from collector.settlement import parquet
from collector.settlement.export import (
    ExportRequest,
    Manifest,
    csv_chunks,
    export_rows,
    manifest_for,
)
from collector.settlement.sites import Sites, load_sites

#: The longest window one export may cover.
MAX_DAYS = 400


def run(
    settings: Settings,
    export: str,
    *,
    first: date,
    end: date,
    site_id: str | None,
    tz: str | None,
    bucket: str,
    out: Path | None,
    fmt: str = "csv",
) -> int:
    """Write the export to ``out`` (stdout when None) and its manifest beside it (stderr
    for stdout); the exit status."""
    sites = load_sites(settings)
    for name, value in (("--from", first), ("--to", end)):
        if not date(2000, 1, 2) <= value <= date(2100, 1, 1):
            raise UsageError(f"{name} {value}: days lie between 2000-01-02 and 2100-01-01")
    if end <= first:
        raise UsageError(f"--to {end} must be after --from {first} (--to is exclusive)")
    if (end - first).days > MAX_DAYS:
        raise UsageError(f"at most {MAX_DAYS} days per export; split the window")
    site = None
    if site_id is not None:
        site = sites.get(site_id)
        if site is None:
            known = ", ".join(s.id for s in sites.sites) or "none: set SITES_FILE"
            raise UsageError(f"no site {site_id!r} (sites: {known})")
    if tz is not None:
        try:
            known_zone(tz)
        except ValueError as exc:
            raise UsageError(f"--tz {tz!r}: {exc}") from None
    if export == "site-balance" and site is None and not any(s.main_meter for s in sites.sites):
        raise UsageError("site-balance needs a site with a main_meter (SITES_FILE)")
    if fmt == "parquet":
        parquet.require()
    request = ExportRequest(
        export, first, date.fromordinal(end.toordinal() - 1), site, tz, bucket=bucket
    )
    target = out.with_suffix(out.suffix + ".partial") if out else None
    with target.open("wb") if target else sys.stdout.buffer as sink:
        manifest = run_async(_write(settings, sites, request, sink, fmt))
    text = json.dumps(manifest.as_dict(), indent=2) + "\n"
    if out is not None and target is not None:
        target.replace(out)  # whole or not at all
        Path(f"{out}.manifest.json").write_text(text)
        print(f"{out}: {manifest.rows} rows, sha256 {manifest.sha256}", file=sys.stderr)
    else:
        sys.stderr.write(text)
    return 0


async def _write(
    settings: Settings, sites: Sites, request: ExportRequest, sink: BinaryIO, fmt: str
) -> Manifest:
    await prepare_database(settings)
    pool = await create_pool(settings, min_size=1, max_size=1, application_name="export")
    manifest = manifest_for(request)
    try:
        async with pool.acquire() as conn:
            rows = export_rows(conn, sites, request)
            chunks = parquet.parquet_chunks(manifest, rows) if fmt == "parquet" else (
                csv_chunks(manifest, rows)
            )  # fmt: skip
            async for chunk in chunks:
                sink.write(chunk)
    finally:
        await pool.close()
    return manifest

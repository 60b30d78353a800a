"""What Mosquitto's autosave settings cost, and what a broker crash loses with each.

Readings the broker has acknowledged to a device but not yet delivered to the collector
(the collector is down, or paused by a database outage) live in the broker's memory until
it saves its database. Mosquitto 2.0 writes the whole database at each save, so saving
often costs more the longer the queue is. For each setting this measures, on its own
throwaway broker (with mosquitto/limits.d):

* publish: QoS 1 readings/s from two C publishers into the collector's offline session
  (the queue grows to ``--queue`` readings), and the broker's CPU seconds for it;
* lost: the broker is SIGKILLed ``--settle`` seconds after the last PUBACK, restarted, and
  the session drained: how many acknowledged readings did not survive.

    .venv/bin/python bench/broker_persistence.py                 # ~2 minutes
    .venv/bin/python bench/broker_persistence.py --queue 500000

Bounded: a fixed number of readings per setting, every wait with a deadline.
"""

from __future__ import annotations

try:  # run as a script: take bench/ off sys.path first (bench/_paths.py)
    import _paths
except ModuleNotFoundError:  # imported as bench.<module>: the path is right already
    _paths = None

# isort: split

import argparse
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent

from bench.throughput import RESULTS, TOOL, build_tool, publish, run_json  # noqa: E402
from collector.tools.local_services import MosquittoProcess  # noqa: E402

SETTINGS = {
    "autosave_interval 1800 (Mosquitto's default)": "autosave_interval 1800",
    "autosave_interval 60": "autosave_interval 60",
    "autosave_interval 10": "autosave_interval 10",
    "autosave_interval 5": "autosave_interval 5",
    "autosave_interval 2": "autosave_interval 2",
    "autosave_interval 1 ": "autosave_interval 1",
    "autosave_on_changes, every 10,000 changes": (
        "autosave_on_changes true\nautosave_interval 10000"
    ),
    "autosave_on_changes, every 1,000 changes": "autosave_on_changes true\nautosave_interval 1000",
}


def measure(label: str, config: str, queue: int, settle_s: float) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="energy-autosave-"))
    # The limits file sets autosave_interval 60; this setting comes after it and wins.
    broker = MosquittoProcess(directory / "broker", extra_config=config)
    broker.start()
    try:
        cid = f"collector-{uuid.uuid4().hex[:6]}"
        sub = [str(TOOL), "sub", "127.0.0.1", str(broker.port), cid, "4", f"{cid}/+/+/reading"]
        run_json([*sub, "0", "30"], 30)  # the collector's session, offline from now on
        assert broker.proc is not None
        process = psutil.Process(broker.proc.pid)
        cpu = sum(process.cpu_times()[:2])
        began = time.monotonic()
        sent = publish(broker, queue, 2, prefix=cid)
        elapsed = time.monotonic() - began
        cpu = sum(process.cpu_times()[:2]) - cpu
        time.sleep(settle_s)
        broker.kill()
        broker.start()
        # The subscriber waits for all of them; what was lost makes it wait the whole timeout.
        got = run_json([*sub, str(queue), "20"], 60)["received"]
        acked = sum(p["published"] for p in sent)
        return {
            "setting": label,
            "config": config,
            "published": queue,
            "publish_per_s": round(queue / elapsed),
            "broker_cpu_s": round(cpu, 2),
            "acked_by_broker": acked,
            "survived_crash": got,
            "lost": acked - got,
        }
    finally:
        broker.kill()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", type=int, default=200_000)
    parser.add_argument("--settle", type=float, default=2.0, metavar="SECONDS")
    parser.add_argument("--only", nargs="*", help="settings whose label contains this")
    args = parser.parse_args()
    build_tool()
    rows = []
    for label, config in SETTINGS.items():
        if args.only and not any(o == label.strip() for o in args.only):
            continue
        row = measure(label, config, args.queue, args.settle)
        rows.append(row)
        print(json.dumps(row), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"broker-persistence-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(rows, indent=2))
    print(f"\n| setting | publish readings/s | broker CPU s | lost in a crash {args.settle:g} s "
          f"after the last PUBACK (of {args.queue:,}) |")  # fmt: skip
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['publish_per_s']:,} | {r['broker_cpu_s']} | {r['lost']:,} |")
    print(f"\n{out}")


if __name__ == "__main__":
    main()

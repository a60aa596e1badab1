"""Run the benchmarks: ``python -m bench.run [--only NAME] [--backend sqlite,postgresql]
[--devices 80000] [--requests 2000] [--out bench/results/latest.json]``.

Each backend gets a fresh database; the registration benchmark fills it and the search benchmark
then queries it (with ``--only search`` the store is filled the same way, untimed). Results go to
the JSON file and, as a Markdown table, next to it and to standard output.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench.adr_fanout import bench_adr
from bench.billing_export import bench_billing_export
from bench.cim import bench_cim
from bench.collection import bench_collection
from bench.harness import Run, machine, markdown, write_json
from bench.ieee1888 import bench_ieee1888
from bench.public import bench_public
from bench.fleet import Fleet, write_csv
from bench.registration import bench_registration, import_devices, prepare_store
from bench.search import bench_search
from bench.stores import BACKENDS, fresh_database, postgresql_server

BENCHMARKS = ("registration", "search", "billing", "collection", "ieee1888", "cim", "adr", "public")
FLEET_BENCHMARKS = ("registration", "search", "billing", "collection")


def _names(value: str, known: tuple[str, ...], what: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown) or '(none)'}; known: {', '.join(known)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", type=lambda v: _names(v, BENCHMARKS, "benchmark"), default=list(BENCHMARKS),
                   help=f"comma-separated benchmarks to run ({', '.join(BENCHMARKS)}; default all)")
    p.add_argument("--backend", type=lambda v: _names(v, BACKENDS, "backend"), default=list(BACKENDS),
                   help="comma-separated stores (default sqlite,postgresql)")
    p.add_argument("--devices", type=int, default=80_000, help="meters to register (default 80000, the seed's MDM)")
    p.add_argument("--requests", type=int, default=2000, help="timed requests per search kind (default 2000)")
    p.add_argument("--out", type=Path, default=Path("bench/results/latest.json"), help="JSON result file")
    args = p.parse_args(argv)
    if not 2_000 <= args.devices <= 80_000:
        p.error("--devices must be between 2000 and 80000 (4 head-ends x 20,000)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pg = postgresql_server() if "postgresql" in args.backend else None
    if "postgresql" in args.backend and pg is None:
        print("PostgreSQL is not reachable (set MDMHUB_BENCH_PG_URL, or run with --backend sqlite)", file=sys.stderr)
        return 2
    run = Run(machine(pg["server_version"] if pg else None),
              options={"only": args.only, "backend": args.backend, "devices": args.devices,
                       "requests": args.requests})
    if pg:
        run.details["postgresql_settings"] = pg
    with tempfile.TemporaryDirectory(prefix="mdmhub-bench-") as tmp:
        workdir = Path(tmp)
        for backend in args.backend:
            if "ieee1888" in args.only:
                with fresh_database(backend, workdir) as url:  # its own store: points, not meters
                    print(f"[{backend}] IEEE 1888 WRITE and FETCH over HTTP ...", file=sys.stderr, flush=True)
                    bench_ieee1888(run, backend, url, workdir)
            if "cim" in args.only:
                with fresh_database(backend, workdir) as url:  # its own store: a day ingested over HTTP
                    print(f"[{backend}] 61968-9 ingest of {args.devices:,} meters' day and get MeterReadings ...",
                          file=sys.stderr, flush=True)
                    bench_cim(run, backend, url, workdir, meters=args.devices)
            if "public" in args.only:
                with fresh_database(backend, workdir) as url:  # its own store: the fleet, customers and a day
                    print(f"[{backend}] public API: cluster aggregate over {args.devices:,} meters and 100 "
                          "concurrent clients ...", file=sys.stderr, flush=True)
                    bench_public(run, backend, url, args.devices, workdir)
            if "adr" in args.only:  # its own stores: 20 % of the meters with an ADR policy
                print(f"[{backend}] OpenADR fan-out of one event to {args.devices // 5:,} of {args.devices:,} "
                      "meters ...", file=sys.stderr, flush=True)
                bench_adr(run, backend, workdir, lds=args.devices // 5, meters=args.devices)
            if not any(b in FLEET_BENCHMARKS for b in args.only):
                continue
            with fresh_database(backend, workdir) as url:
                print(f"[{backend}] registration of {args.devices:,} meters ...", file=sys.stderr, flush=True)
                if "registration" in args.only:
                    bench_registration(run, backend, url, args.devices, workdir)
                else:
                    fleet = Fleet(args.devices)
                    prepare_store(url, fleet)
                    import_devices(url, write_csv(workdir / "registration.csv", fleet), workdir)
                if "search" in args.only:
                    print(f"[{backend}] search, {args.requests:,} requests of each kind ...", file=sys.stderr,
                          flush=True)
                    bench_search(run, backend, url, args.devices, workdir, args.requests)
                if "billing" in args.only:
                    print(f"[{backend}] billing export of a day of {args.devices:,} meters ...", file=sys.stderr,
                          flush=True)
                    bench_billing_export(run, backend, url, args.devices, workdir)
                if "collection" in args.only:
                    print(f"[{backend}] collection cycles of {args.devices:,} meters ...", file=sys.stderr, flush=True)
                    bench_collection(run, backend, url, args.devices, workdir, prepared=True)
    write_json(run, args.out)
    table = markdown(run)
    args.out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table)
    print(json.dumps(run.details, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Profile the registration import under cProfile: ``python -m bench.profile [--backend postgresql]
[--devices 80000] [--out bench/results/registration-postgresql.prof]``.

The CLI runs exactly as in the benchmark, but under the profiler (so it is slower: read shares, not
seconds). Prints where the time goes by cumulative and by own time; open the .prof file with
``python -m pstats`` or snakeviz for more.
"""

from __future__ import annotations

import argparse
import io
import pstats
import sys
import tempfile
from pathlib import Path

from bench.fleet import Fleet, write_csv
from bench.registration import prepare_store, run_child
from bench.stores import BACKENDS, fresh_database, hub_env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=BACKENDS, default="postgresql")
    p.add_argument("--devices", type=int, default=80_000)
    p.add_argument("--out", type=Path, default=None, help="profile file (default bench/results/registration-BACKEND.prof)")
    p.add_argument("--top", type=int, default=25, help="rows of each listing")
    args = p.parse_args(argv)
    out = (args.out or Path(f"bench/results/registration-{args.backend}.prof")).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mdmhub-profile-") as tmp:
        workdir = Path(tmp)
        fleet = Fleet(args.devices)
        csv_path = write_csv(workdir / "registration.csv", fleet)
        with fresh_database(args.backend, workdir) as url:
            prepare_store(url, fleet)
            child = run_child([sys.executable, "-m", "cProfile", "-o", str(out), "-m", "hub.cli", "devices", "import",
                               str(csv_path), "--quiet"], hub_env(url), workdir)
    if child.returncode != 0:
        print(child.stdout[-2000:], child.stderr[-2000:], file=sys.stderr)
        return 1
    print(f"{args.devices:,} meters on {args.backend}: {child.wall_s:.1f} s under the profiler; profile in {out}")
    listings = (("cumulative time, the hub's services and the database layers", "cumulative", _LAYERS),
                ("own time, everything", "tottime", ""))
    for title, order, layers in listings:
        buf = io.StringIO()
        pstats.Stats(str(out), stream=buf).sort_stats(order).print_stats(layers, args.top)
        print(f"\n== by {title}\nncalls" + buf.getvalue().split("ncalls", 1)[-1].rstrip())
    return 0


_LAYERS = r"hub/services/|sqlalchemy/(orm|engine)/|psycopg/|pydantic"


if __name__ == "__main__":
    sys.exit(main())

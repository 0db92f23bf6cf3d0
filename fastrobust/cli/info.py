"""`fastrobust info [--json] [--kernels]`: build information and which ops have CPU / CUDA kernels."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="build information and kernel availability",
                       description="Build information and which ops have CPU / CUDA kernels.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--kernels", action="store_true",
                   help="print the CUDA kernels' resources (ptxas) and their launches' occupancy on an H100 "
                        "instead (default: off)")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import info

    return info.main((["--json"] if args.json else []) + (["--kernels"] if args.kernels else []))

"""`python -m dskd.data download {mvtec_ad,mvtec3d,mt_defects,mpdd} --root R`"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import DskdError, os_problem
from .download import SOURCES, download


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dskd.data", description="Download the benchmarks.")
    sub = parser.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help="download and extract one benchmark")
    dl.add_argument("name", choices=sorted(SOURCES))
    dl.add_argument("--root", required=True, help="folder to put the data in (the dataset lands in ROOT/<name>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(download(args.name, args.root))
    except DskdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:
            raise
        print(f"error: {os_problem(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

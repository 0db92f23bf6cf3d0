"""The `fastrobust` command line.

    fastrobust train [options]          adversarial training, then the robustness evaluation
                                        (no options: the embedded digits run on the CPU, minutes)
    fastrobust eval CHECKPOINT [...]    robustness evaluation of a training checkpoint
                                        (or of any model: --model SPEC --data NAME)
    fastrobust detect CHECKPOINT [...]  adversarial-example detectors for it (the survey's protocol)
    fastrobust bench SUITE [...]        benchmark suites (results in ./bench-results)
    fastrobust info [--json]            build information and which ops have CPU/CUDA kernels

`fastrobust COMMAND --help` lists a command's options and their defaults. Errors in the
options, the data, a checkpoint, the device or the files (a read-only folder, a full disk)
are one line on stderr with exit status 2; --debug (before or after COMMAND) shows the full
traceback instead.
"""
import argparse
import sys

from . import bench, detect, eval, info, train
from .common import HelpFormatter, Parser
from .errors import CLIError, one_line, user_os_error

DEBUG_HELP = "on an error, show the full traceback instead of one line (default: off)"


def build_parser() -> Parser:
    parser = Parser(prog="fastrobust", description=__doc__.split("\n\n")[1], formatter_class=HelpFormatter,
                    allow_abbrev=False)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (train, eval, detect, bench, info):
        command.add_parser(sub)
    for name, p in sub.choices.items():
        if name != "bench":  # bench passes everything on to the benchmark runner
            # SUPPRESS: absent after the command, it leaves the value set before it
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    lead = 0
    while lead < len(argv) and argv[lead] == "--debug":
        lead += 1
    if lead < len(argv) and argv[lead] == "bench":
        # everything after `bench` (--help included) goes to the benchmark runner's own parser
        args = build_parser().parse_args(argv[:lead] + ["bench"])
        args.bench_args = argv[lead + 1:]
    else:
        args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except CLIError as exc:
        if args.debug:
            exc.__suppress_context__ = False  # the error it was made from, too
            raise
        message = one_line(exc)
    except OSError as exc:  # the machine's state (read-only folder, full disk) is no bug
        message = user_os_error(exc)
        if message is None or args.debug:
            raise
    except KeyboardInterrupt:
        print(f"\nfastrobust {args.command}: interrupted", file=sys.stderr)
        return 130
    print(f"fastrobust {args.command}: error: {message}", file=sys.stderr)
    return 2

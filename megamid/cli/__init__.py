"""megamid COMMAND ...   (the console entry point; `megamid --help` lists commands)

Each command is a module megamid.cli.<name> with `add_arguments(parser)` and `run(args) -> int`.
Modules are imported only when their command runs, so `megamid --help` stays fast.
"""

import argparse
import importlib
import sys

from megamid.errors import MegamidError

COMMANDS = {
    "train": "run or resume a recipe (torchrun for several processes)",
    "plan": "validate a recipe and print its phase table without training",
    "data": "prepare indexed datasets, train tokenizers, build the demo corpus",
    "eval": "long-context evaluation of a checkpoint",
    "study": "small-scale studies: context extension methods, annealing (report.md)",
}


class CommandError(MegamidError):
    """Bad command-line input: printed as one line and the command exits with status 2."""


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="megamid", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"megamid: unknown command {argv[0]!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name = argv[0]
    module = importlib.import_module(f"megamid.cli.{name}")
    cmd_parser = argparse.ArgumentParser(prog=f"megamid {name}", description=COMMANDS[name])
    module.add_arguments(cmd_parser)
    # Intermixed: options may follow the key=value overrides (`megamid train R.yaml a=b --exit-after-steps 5`);
    # argparse cannot intermix commands that have subcommands (`megamid data prepare ...`).
    has_subcommands = any(isinstance(a, argparse._SubParsersAction) for a in cmd_parser._actions)
    args = cmd_parser.parse_args(argv[1:]) if has_subcommands else cmd_parser.parse_intermixed_args(argv[1:])
    from megamid.platform import LaunchError  # local: keep `megamid --help` free of heavy imports

    # Expected failures (bad input) become one line and exit 2; anything else is a bug and keeps its traceback.
    try:
        return int(module.run(args) or 0)
    except (MegamidError, LaunchError, FileNotFoundError) as exc:
        print(f"megamid {name}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""python tools/average_checkpoints.py CKPT [CKPT ...] --out DIR [--weights w1,w2,...]

Averages megamid checkpoints (souping of branch anneals) saved at any TP/PP into one model-only
checkpoint at DIR (usable as a recipe's `base` and by `megamid eval`). A CKPT is a checkpoint
directory (iter_NNNNNNN) or a run's checkpoint dir with a `latest` pointer. Weights default to equal
and are normalised to sum to 1. Runs in one process (CPU, or one GPU where CUDA is present).
"""

import argparse
import sys


def parse_weights(text: str) -> list:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="average_checkpoints.py", description=__doc__.splitlines()[2])
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT")
    parser.add_argument("--out", required=True, help="output directory (new or empty)")
    parser.add_argument("--weights", type=parse_weights, help="comma-separated, one per CKPT (default: equal)")
    args = parser.parse_args(argv)
    from megamid.checkpoint.average import average_checkpoints
    from megamid.config import ConfigError
    from megamid.platform import shutdown

    try:
        path = average_checkpoints(args.checkpoints, args.out, args.weights)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"average_checkpoints: error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    print(f"average_checkpoints: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

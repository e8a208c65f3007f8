"""python /opt/megamid/tools/container_check.py --source-tree /opt/megamid [--cuda-kernels]
       [--megatron-core 0.16.1] [--te-min 2.9 --te-below 2.12]

The Dockerfile's last build step (and a CPU test that emulates it): run from outside the source tree,
it checks that `import megamid` finds the installed package (not the checkout, which has no compiled
modules), that its C++ helpers import, that the CUDA kernels' module was built (found, not imported:
there is no GPU driver at build time), that megatron-core is the pinned version and the image's
Transformer Engine a version it supports (read from package metadata: importing TE needs a driver),
and that the runtime dependencies (tokenizers for tokenizer.json, sentencepiece, yaml, psutil) are there.
Exit status 1 with one line per failed check.
"""

import argparse
import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys

RUNTIME_MODULES = ("tokenizers", "sentencepiece", "yaml", "psutil", "numpy")


def _version_tuple(text: str) -> tuple:
    """'2.9.0+abc' -> (2, 9, 0); '2.12.0.dev0' -> (2, 12, 0)."""
    match = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(x) for x in match.group(0).split(".")) if match else ()


def check(source_tree=None, cuda_kernels=False, megatron_core=None, te_min=None, te_below=None) -> list:
    """Failure lines (empty: all checks pass)."""
    failures = []
    try:
        import megamid
    except ImportError as exc:
        return [f"import megamid failed: {exc}"]
    where = os.path.realpath(os.path.dirname(megamid.__file__))
    # the tree's own package, not anything below the tree (an installed copy may sit in a folder inside it)
    if source_tree and where == os.path.realpath(os.path.join(source_tree, "megamid")):
        failures.append(f"import megamid found the source tree ({where}), not the installed package: run the "
                        f"check from outside {source_tree} (cd /) and install with `pip install .`")
    try:
        importlib.import_module("megamid._C")
    except ImportError as exc:
        failures.append(f"import megamid._C failed ({exc}): the C++ helpers were not built into {where}")
    if cuda_kernels and importlib.util.find_spec("megamid._cuda") is None:
        failures.append("megamid._cuda not found: the CUDA kernels were not built (MEGAMID_BUILD_CUDA=1 and nvcc)")
    for name in RUNTIME_MODULES:
        if importlib.util.find_spec(name) is None:
            failures.append(f"runtime dependency {name!r} is not installed")
    if megatron_core:
        try:
            have = importlib.metadata.version("megatron-core")
        except importlib.metadata.PackageNotFoundError:
            have = None
        if have != megatron_core:
            failures.append(f"megatron-core {have or 'missing'} installed, the image pins {megatron_core}")
    if te_min or te_below:
        try:
            te = importlib.metadata.version("transformer_engine")
        except importlib.metadata.PackageNotFoundError:
            te = None
        if te is None:
            failures.append("Transformer Engine is not installed in the image")
        elif (te_min and _version_tuple(te) < _version_tuple(te_min)) or (
                te_below and _version_tuple(te) >= _version_tuple(te_below)):
            failures.append(f"Transformer Engine {te} is outside what megatron-core supports "
                            f"(>= {te_min or '-'}, < {te_below or '-'}): pick the matching NGC tag")
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-tree", help="the checkout the image was built from (must not be what imports)")
    parser.add_argument("--cuda-kernels", action="store_true", help="require the built CUDA extension")
    parser.add_argument("--megatron-core", help="the pinned megatron-core version")
    parser.add_argument("--te-min", help="lowest Transformer Engine version megatron-core supports")
    parser.add_argument("--te-below", help="first Transformer Engine version it does not")
    args = parser.parse_args(argv)
    failures = check(args.source_tree, args.cuda_kernels, args.megatron_core, args.te_min, args.te_below)
    for line in failures:
        print(f"container check: {line}", file=sys.stderr)
    if failures:
        return 1
    import megamid

    print(f"container check: ok (megamid {megamid.__version__} from {os.path.dirname(megamid.__file__)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

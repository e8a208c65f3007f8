"""python benchmarks/convert_memory.py [--size 1b|tiny] [--tp 1] [--pp 1] [--work DIR] [--keep]

Peak memory and time of the HF converters on a synthetic model (benchmarks/synthetic_hf_model.py;
`--size 1b`: 1.24B parameters, 2.4 GB in bf16), each run as its own process whose peak resident set
(VmHWM of /proc/self/status, read at exit: what /usr/bin/time -v reports) is measured:
  baseline  the converter's start-up alone (python, torch, megatron-core, a world-of-one process group)
  import    tools/convert_hf_to_megamid.py --tp/--pp
  export    tools/convert_megamid_to_hf.py of that checkpoint
Prints each peak, its excess over the baseline measured in the same run, and that excess as a multiple of
the largest single tensor (the embedding) and of one decoder layer: streaming conversion keeps it near
one tensor, whatever the model size. Then checks that the exported weights equal the input bit for bit.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

BASELINE = ("from megamid.checkpoint.hf_conversion import _init_megatron_io; _init_megatron_io(); "
            "import megatron.core.dist_checkpointing")
# Runs a script (or code) and writes its process's VmHWM (kB) to a file at exit. Not wait4's ru_maxrss: a
# child started by vfork records the parent's peak at exec, so it would include this script's own memory.
WRAP = """import atexit, runpy, sys
def report(path=sys.argv[1]):
    hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]
    open(path, 'w').write(hwm)
atexit.register(report)
target, sys.argv = sys.argv[2], sys.argv[2:]
exec(sys.argv[1]) if target == '-c' else runpy.run_path(target, run_name='__main__')
"""


def run_measured(args: list[str], work: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of `python *args`; raises with its output if it fails."""
    report = os.path.join(work, "vmhwm")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAP, report, *args], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    with open(report) as f:
        return wall, int(f.read()) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1b", choices=["1b", "tiny"])
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--work", help="folder for the model and checkpoints (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep --work's files")
    args = parser.parse_args()

    import torch

    from megamid.checkpoint.hf_llama import hf_weight_shapes
    from megamid.checkpoint.safetensors_files import SafetensorsReader
    from synthetic_hf_model import write_model

    work = args.work or tempfile.mkdtemp(prefix="convert_memory_")
    hf, ckpt, back = (os.path.join(work, n) for n in ("hf", "megamid", "back"))
    for path in (hf, ckpt, back):
        if os.path.exists(path):
            shutil.rmtree(path)
    try:
        cfg = write_model(hf, args.size)
        item = cfg.torch_dtype.itemsize
        shapes = hf_weight_shapes(cfg)
        numel = {n: torch.Size(s).numel() for n, s in shapes.items()}
        model_mb = sum(numel.values()) * item / 2**20
        largest_mb = max(numel.values()) * item / 2**20
        layer_mb = sum(v for n, v in numel.items() if n.startswith("model.layers.0.")) * item / 2**20
        rows = [("baseline", *run_measured(["-c", BASELINE], work)),
                ("import", *run_measured(["tools/convert_hf_to_megamid.py", "--hf-dir", hf, "--out", ckpt,
                                          "--tp", str(args.tp), "--pp", str(args.pp)], work)),
                ("export", *run_measured(["tools/convert_megamid_to_hf.py", "--ckpt", ckpt, "--out", back], work))]
        base = rows[0][2]
        print(f"\nmodel {args.size}: {cfg.num_parameters() / 1e9:.2f}B parameters, {model_mb:.0f} MB {cfg.dtype}; "
              f"largest tensor {largest_mb:.0f} MB, one layer {layer_mb:.0f} MB; import at TP={args.tp} PP={args.pp}")
        print(f"{'':10}{'wall s':>8}{'peak MB':>10}{'- baseline':>12}{'/ largest':>11}{'/ layer':>9}{'/ model':>9}")
        for name, wall, peak in rows:
            extra = peak - base
            print(f"{name:10}{wall:8.1f}{peak:10.0f}{extra:12.0f}{extra / largest_mb:11.2f}{extra / layer_mb:9.2f}"
                  f"{peak / model_mb:9.2f}")
        a, b = SafetensorsReader(hf), SafetensorsReader(back)
        same = sorted(a.keys()) == sorted(b.keys()) and all(torch.equal(a.get(n), b.get(n)) for n in a.keys())
        print(f"round trip bit-exact: {same}")
        if not same:
            raise SystemExit(1)
    finally:
        if not args.keep:
            shutil.rmtree(work if not args.work else hf, ignore_errors=True)
            if args.work:
                shutil.rmtree(ckpt, ignore_errors=True)
                shutil.rmtree(back, ignore_errors=True)


if __name__ == "__main__":
    main()

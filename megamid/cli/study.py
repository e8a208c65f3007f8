"""megamid study {extension,anneal} OUT [--quick] [--threads N]

Small-scale studies that show the methods work on a laptop CPU (each ~20 min on 2 cores at the default
scale): `extension` compares RoPE extension methods from one base that retrieves, zero-shot and after
the same fine-tune; `anneal` compares WSD decay with cosine and a curated anneal with the unfiltered
mix. Each writes OUT/report.md (tables, figures, times, the commands it ran) and OUT/results.json.
"""


def add_arguments(parser) -> None:
    parser.add_argument("study", choices=["extension", "anneal"], help="which study")
    parser.add_argument("out", help="output folder (data, checkpoints, report.md)")
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (the test's plumbing check)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per training process (default 1)")
    parser.add_argument("--base-max-steps", type=int, default=None, help="extension: cap of the base's steps")
    parser.add_argument("--ft-steps", type=int, default=None, help="extension: fine-tune steps per method")
    parser.add_argument("--induction-steps", type=int, default=None,
                        help="extension: steps of the base's first (copy/recall) phase, within --base-max-steps")


def run(args) -> int:
    import dataclasses
    import os

    from megamid.cli import CommandError
    from megamid.study.runs import QUICK, Scale

    scale = QUICK if args.quick else Scale()
    for name in ("threads", "base_max_steps", "ft_steps", "induction_steps"):
        value = getattr(args, name)
        if value is not None:
            if value < 1 and not (name == "induction_steps" and value == 0):
                raise CommandError(f"--{name.replace('_', '-')}={value} is invalid: a positive integer")
            scale = dataclasses.replace(scale, **{name: value})
    if scale.induction_steps >= scale.base_max_steps:
        raise CommandError(f"--base-max-steps={scale.base_max_steps} is invalid: the base's first phase alone takes "
                           f"{scale.induction_steps} steps (--induction-steps); use more, or --induction-steps "
                           f"below {scale.base_max_steps} (0: no curriculum phase)")
    os.environ.setdefault("OMP_NUM_THREADS", str(scale.threads))
    import torch

    torch.set_num_threads(scale.threads)
    if args.study == "extension":
        from megamid.study.extension import run as study
    else:
        from megamid.study.anneal import run as study
    study(args.out, scale)
    print(f"megamid study {args.study}: wrote {os.path.join(args.out, 'report.md')}")
    return 0

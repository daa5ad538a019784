"""`cascade sr-check CKPT`: a super-resolution stage against upsampling its own input."""

from __future__ import annotations

import argparse

from ..pipeline.sweep import SETTING_TYPES


def read_setting(text: str) -> dict:
    """'steps=5,start_log_snr=6' -> {'steps': 5, 'start_log_snr': 6.0} (values read as `cascade sample` reads them)."""
    changes = {}
    for item in text.split(","):
        key, separator, value = item.strip().replace("-", "_").partition("=")
        if not separator or key not in SETTING_TYPES:
            raise ValueError(f"expected KEY=VALUE with KEY one of {sorted(SETTING_TYPES)}, got {item!r}")
        changes[key] = SETTING_TYPES[key](value)
    return changes


def sr_check(argv: list[str]) -> int:
    from ..demo import sr_check as check

    parser = argparse.ArgumentParser(prog="cascade sr-check", description=check.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", help="a super-resolution stage: .ckpt or export directory (trained on the synthetic data)")
    parser.add_argument("--captions", type=int, default=32, help="held-out captions (one real render each)")
    parser.add_argument("--setting", action="append", default=[], metavar="KEY=V[,KEY=V]",
                        help="sampling settings to compare (repeatable), changes to the stage's own, e.g. "
                             "steps=5,start_log_snr=6; default: the stage's own settings")
    args = parser.parse_args(argv)
    try:
        changes = [read_setting(text) for text in args.setting] or [{}]
    except ValueError as error:
        parser.error(f"--setting: {error}")
    if args.captions < 1:
        parser.error(f"--captions: must be >= 1, got {args.captions}")
    from ..stages import SuperResStage, load_stage

    stage = load_stage(args.stage)
    if not isinstance(stage, SuperResStage):
        parser.error(f"{args.stage}: not a super-resolution stage ({type(stage).__name__})")
    settings = [stage.sampling.updated(**change) for change in changes]
    scenes, x0, lowres = check.real_pairs(stage, args.captions)
    print(f"x0 estimate vs upsampling the input, {len(scenes)} real renders at {stage.image_size} px "
          "(mean squared error, images in [-1, 1]):")
    print("| log-SNR | sigma (EDM) | the stage's x0 estimate | the noisy input | upsampled low-res |")
    print("|---|---|---|---|---|")
    for row in check.x0_errors(stage, scenes, x0, lowres):
        print(f"| {row['log_snr']:g} | {row['sigma_edm']:.3f} | {row['model']:.5f} | {row['noisy input']:.5f} | "
              f"{row['upsampled low-res']:.5f} |")
    print("\nSampled from the real low-res input:")
    print("| settings | MSE to the real render | high-frequency energy / real |")
    print("|---|---|---|")
    for change, row in zip(changes, check.sampling_errors(stage, scenes, x0, lowres, settings)):
        label = ", ".join(f"{k}={v}" for k, v in change.items()) or "the stage's own"
        print(f"| {label} | {row['mse']:.5f} | {row['high-frequency ratio']:.2f} |")
    return 0

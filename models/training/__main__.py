"""``python -m models.training STAGE ...``: the whole model build, stage by stage.

Order (each stage resumes from its checkpoint when re-run; exact commands in models/MODEL_CARD.md)::

    corrasl            train the correspondence network on simulated pairs
    calibrate          measure its systematic offset on validation pairs
    labels             run it over training pairs -> goodness/ORN labels
    head goodness_sar  train the SAR goodness network   (also goodness_opt, orn)
    export             write models/*_SIZE.onnx with metadata
    card               measure, stamp metrics + sha256 into the files, write MODEL_CARD.md
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from . import card, corrasl, export, heads, labels

    p = argparse.ArgumentParser(prog="python -m models.training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", required=True)
    corrasl.add_args(sub.add_parser("corrasl", help="train the correspondence network"))
    corrasl.add_args(sub.add_parser("calibrate", help="measure CorrASL's systematic offset on validation pairs"))
    labels.add_args(sub.add_parser("labels", help="goodness/ORN labels from the trained CorrASL"))
    heads.add_args(sub.add_parser("head", help="train a goodness network or the ORN"))
    export.add_args(sub.add_parser("export", help="export ONNX files with metadata"))
    card.add_args(sub.add_parser("card", help="metrics + sha256 into the files; write MODEL_CARD.md"))
    args = p.parse_args(argv)
    run = {"corrasl": corrasl.train, "calibrate": corrasl.calibrate, "labels": labels.make_labels, "head": heads.train, "export": export.export,
           "card": card.write_card}[args.stage]
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

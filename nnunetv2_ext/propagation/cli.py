"""Commands of the propagation module.

``nnUNetv2_ext_train_propagation -d DATASET -l LABEL -o MODEL.pth`` trains one propagation network (one label) on
the raw dataset's training cases; ``nnUNetv2_ext_propagate -i IN -o OUT -d DATASET -c 2d -tr TRAINER -f FOLDS
-pm MODEL.pth [MODEL2.pth ...] -k 5 --keep 2`` segments k slices per case with the trained nnU-Net 2D model and
propagates them (see :mod:`nnunetv2_ext.propagation.apply`). Bad input is refused before anything is written.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def _dataset_folder(dataset: str) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise ValueError("nnUNet_raw is not set")
    return os.path.join(raw, maybe_convert_to_dataset_name(dataset))


def train_main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="nnUNetv2_ext_train_propagation", description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--dataset", required=True, help="raw dataset id or name (imagesTr/labelsTr volumes)")
    p.add_argument("-l", "--label", required=True, help="the dataset.json label name the network propagates")
    p.add_argument("-o", "--output", required=True, help="model file to write (.pth)")
    p.add_argument("--iterations", type=int, default=2000, help="training iterations (default 2000)")
    p.add_argument("--batch", type=int, default=4, help="clips per iteration (default 4)")
    p.add_argument("--patch", type=int, nargs=2, default=None, help="in-plane training patch (multiples of 8; "
                   "default: the largest that fits every case, at most 256)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, poly-decayed (default 1e-3)")
    p.add_argument("--width", type=int, default=16, help="features of the first encoder stage")
    p.add_argument("--max-skip", type=int, default=3, help="largest slice gap inside a training clip")
    p.add_argument("--seed", type=int, default=1, help="seed of the weights and the clip sampling (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    p.add_argument("-device", "--device", default="cuda", choices=("cpu", "cuda", "mps"), help="as nnUNetv2_train")
    a = p.parse_args(argv)
    from nnunetv2_ext.propagation.training import train_propagation
    try:
        if os.path.exists(a.output) and not a.overwrite:
            raise ValueError(f"{a.output} exists (give --overwrite to replace it)")
        train_propagation(_dataset_folder(a.dataset), a.label, a.output, a.iterations, a.batch, a.patch, a.lr,
                          a.width, a.max_skip, a.seed, a.device)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def propagate_main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="nnUNetv2_ext_propagate", description=__doc__.split("\n\n")[0])
    p.add_argument("-i", "--input", required=True, help="images to segment (nnU-Net naming CASE_0000.ext)")
    p.add_argument("-o", "--output", required=True, help="output folder (nnU-Net prediction files)")
    p.add_argument("-d", "--dataset", required=True, help="dataset of the reference model")
    p.add_argument("-c", "--configuration", default="2d", help="the reference model's configuration (2D)")
    p.add_argument("-tr", "--trainer", default="nnUNetTrainer", help="the reference model's trainer")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="the reference model's plans identifier")
    p.add_argument("-f", "--folds", nargs="+", default=None, help="folds of the reference model (default: all "
                   "found)")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help="checkpoint of the reference model")
    p.add_argument("-pm", "--propagation-models", nargs="+", required=True,
                   help="model files of nnUNetv2_ext_train_propagation, one per label")
    p.add_argument("-k", type=int, default=5, help="slices the reference model segments per case (default 5)")
    p.add_argument("--keep", type=int, default=2, help="reference masks kept per label: the largest (default 2)")
    p.add_argument("--disable_tta", action="store_true", help="no test-time mirroring in the reference model")
    p.add_argument("--overwrite", action="store_true", help="replace an output folder this command wrote")
    p.add_argument("-device", "--device", default="cuda", choices=("cpu", "cuda", "mps"), help="as nnUNetv2_predict")
    a = p.parse_args(argv)
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    from nnunetv2_ext.io_atomic import OutputFolderError, check_output_folder
    from nnunetv2_ext.propagation.apply import propagate_cases
    try:
        model = get_output_folder(a.dataset, a.trainer, a.plans, a.configuration)
        if not os.path.isdir(model):
            raise ValueError(f"no trained model in {model}")
        check_output_folder(a.output, [a.input, model], overwrite=a.overwrite)
        folds = None if a.folds is None else [f if f == "all" else int(f) for f in a.folds]
        propagate_cases(a.input, a.output, model, folds, a.propagation_models, a.k, a.keep, a.device,
                        not a.disable_tta, a.checkpoint)
    except (ValueError, FileNotFoundError, OutputFolderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"predictions in {a.output}")
    return 0

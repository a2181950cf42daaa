"""What a trainer checks before it trains on a dataset with the slice-position channel (before any file is written)."""
from __future__ import annotations

from nnunetv2_ext.slice_position.encoding import SlicePositionError

CHANNEL_KEY = "slice_position_channel"
HOW_TO = "write such a dataset with nnunetv2_ext_add_slice_position -i $nnUNet_raw/DatasetXXX_Name -d NEW_ID"


def position_channel(dataset_json: dict, patch_size, transpose_forward, trainer: str) -> int:
    """The index of the position channel; SlicePositionError when the dataset has none, the channel would be
    normalised by nnU-Net, or the configuration is not a 2d one that slices along the encoded (axial) axis."""
    if CHANNEL_KEY not in dataset_json:
        raise SlicePositionError(f"{trainer}: the dataset has no slice-position channel ({CHANNEL_KEY} missing from "
                                 f"dataset.json); {HOW_TO}")
    channel = dataset_json[CHANNEL_KEY]
    names = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    if not isinstance(channel, int) or str(channel) not in {str(k) for k in names}:
        raise SlicePositionError(f"{trainer}: {CHANNEL_KEY} = {channel!r} is not one of the dataset's channels "
                                 f"{sorted(names)}")
    name = {str(k): v for k, v in names.items()}[str(channel)]
    if name.lower() != "nonorm":
        raise SlicePositionError(f"{trainer}: channel {channel} (the slice position) is named {name!r}; it must be "
                                 f"'noNorm', or nnU-Net normalises the positions away")
    if len(patch_size) != 2:
        raise SlicePositionError(f"{trainer}: the slice position is one value per 2D slice; use a 2d configuration "
                                 f"(this one has a {len(patch_size)}D patch {tuple(patch_size)})")
    if tuple(transpose_forward)[0] != 0:
        raise SlicePositionError(f"{trainer}: the plans slice the volumes along image axis "
                                 f"{tuple(transpose_forward)[0]} (transpose_forward {tuple(transpose_forward)}), not "
                                 f"along the axial axis the positions encode")
    return channel

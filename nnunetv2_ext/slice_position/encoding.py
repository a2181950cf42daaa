"""Slice-position encoding (Pham et al., FLARE22, §2.2): each axial slice carries its relative position in the volume.

The paper gives both CPS networks the slice's relative axial position; its text was not available to us, so the form
is ours (trainers_docs/nnUNetTrainerSlicePosition.md, "Paper vs code"): one extra input channel, constant over each
axial slice, equal to

    p_k = (k + 1/2) / Z,   k = 0 for the most superior slice, ..., Z - 1 for the most inferior one,

so p is in (0, 1): the middle of the slice's interval when the volume's axial extent is mapped onto [0, 1] (head end
0, feet end 1). Never 0, so the zero padding nnU-Net adds around patches can be told apart from a position.

"Superior" comes from the image geometry, not the array order: the slice axis is the image axis whose direction is
most aligned with the patient's head-feet axis (LPS +z points to the head, as in DICOM and SimpleITK); it must be the
third image axis (numpy axis 0), so that nnU-Net's 2d configuration, which slices along it, sees a constant channel
per slice. A volume stored feet first and one stored head first get the same p for the same anatomy.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk


class SlicePositionError(ValueError):
    """An image whose slice positions cannot be defined (the message names the case and says why)."""


def relative_positions(num_slices: int) -> np.ndarray:
    """p_k = (k + 1/2) / Z for k = 0 .. Z-1, k counted from the superior end (float64)."""
    if num_slices < 1:
        raise SlicePositionError(f"a volume needs at least one slice, got {num_slices}")
    return (np.arange(num_slices, dtype=np.float64) + 0.5) / num_slices


def slice_axis_problem(direction: Sequence[float]) -> Optional[str]:
    """Why positions cannot be defined for an image with this direction (SimpleITK's row-major 3x3 matrix, column j =
    direction of image axis j), or None: a 2D image, or another image axis closer to the head-feet axis than the
    third (a sagittal or coronal series)."""
    d = np.asarray(direction, dtype=np.float64)
    if d.size != 9:
        return f"slice positions need a 3D image, got a {int(round(np.sqrt(d.size)))}D one"
    head_feet = d.reshape(3, 3)[2]  # LPS z component of each image axis
    axis = int(np.argmax(np.abs(head_feet)))
    if axis != 2:
        return (f"the slices are not axial (image axis {axis}, not the third, runs head-feet; direction "
                f"{tuple(float(v) for v in np.round(d, 3))}); reorient the image so that its slices are axial")
    return None


def slice_axis_points_superior(direction: Sequence[float], case: str = "image") -> bool:
    """True when the image index along the third axis grows towards the head (its direction's LPS z component > 0);
    SlicePositionError naming ``case`` when :func:`slice_axis_problem` finds one."""
    problem = slice_axis_problem(direction)
    if problem is not None:
        raise SlicePositionError(f"{case}: {problem}")
    return bool(direction[8] > 0)


def positions_for_image(image: sitk.Image, case: str = "image") -> np.ndarray:
    """p of each slice of ``image`` in numpy order (array axis 0), following :func:`relative_positions`."""
    if image.GetDimension() != 3:
        raise SlicePositionError(f"{case}: slice positions need a 3D image, got a {image.GetDimension()}D one")
    p = relative_positions(image.GetSize()[2])
    return p[::-1].copy() if slice_axis_points_superior(image.GetDirection(), case) else p


def position_image(image: sitk.Image, case: str = "image") -> sitk.Image:
    """The position channel of ``image``: float32, same grid and geometry, constant p_k over slice k."""
    p = positions_for_image(image, case).astype(np.float32)
    nz = image.GetSize()[2]
    ny, nx = image.GetSize()[1], image.GetSize()[0]
    out = sitk.GetImageFromArray(np.broadcast_to(p[:, None, None], (nz, ny, nx)).copy())
    out.CopyInformation(image)
    return out

"""Phantom B: a second, independently written generator of synthetic abdominal CT with one small organ.

Every case is a 3D volume of Hounsfield units, array order (z, y, x), default shape (40, 64, 64) and spacing
(3.0, 1.0, 1.0) mm, with one target label (1, "organ"): a pancreas-like gland that occupies well under 1 % of the
voxels (0.17-0.51 %, median 0.36 %, at the default shape) and is present on one contiguous block of axial slices in
the middle of the volume, with organ-free slices above and below it (at least ``max(2, ceil(0.1 * z))`` at each
end; in practice 10 or more at the default shape). It exists so that a method tuned on one phantom can be checked
on another one that was designed without looking at the first (see ``docs/phantom_b.md``). Needs numpy and
SimpleITK only.

Orientation follows SimpleITK/ITK (LPS with an identity direction): x grows towards the patient's left, y towards the
back, z towards the head. Slice 0 is the most caudal one. The anatomy is defined in coordinates relative to the grid
(the body fills the field of view whatever the shape), so the spacing only goes into the file headers.

Anatomy (every structure has per-case size, position and intensity variation)
-------------------------------------------------------------------------------
* Body: a superellipse-like outline (flat back, angular harmonics) on a curved CT table; skin; subcutaneous fat of
  per-case thickness (thicker at the flanks); an abdominal wall of rectus muscles with a linea alba and three lateral
  muscle layers separated by thin fat planes. Visceral fat has a texture with mesenteric strands and small enhancing
  mesenteric vessels (sub-voxel, so they look like faint soft-tissue dots) and a few lymph nodes.
* Spine: vertebral bodies (cortical shell, cancellous core) with intervertebral discs (soft-tissue HU) every few
  slices, spinal canal, posterior arch with spinous and transverse processes, paraspinal muscles, psoas muscles that
  grow towards the pelvis; ribs around the upper half and lung bases in the top slices.
* Vessels: aorta (sometimes with calcified plaques), IVC, superior mesenteric artery with its fat collar, superior
  mesenteric vein, portal vein to the liver hilum, left renal vein crossing between aorta and SMA, and a splenic vein
  that runs along the back of the organ's body and tail (contrast-enhanced, brighter than the organ but touching it).
* Organs: liver (right upper quadrant, a left lobe across the midline high up, tapering to a lateral tip below;
  portal/hepatic vessel network), gallbladder (absent in some cases), spleen (posterior-left crescent), kidneys with
  cortex, medulla and sinus fat, a stomach with rugae, an air-fluid level, fluid or mottled food.
* Bowel: a duodenal C-loop wrapped around the organ's head (its third part runs below the organ, between aorta and
  SMA), a colon frame (ascending, transverse, descending) with haustra, gas and mottled stool, and 14-20 small-bowel
  loops (mostly below the organ, two jejunal loops next to it) that are filled with positive oral contrast, water,
  gas (with air-fluid levels), or collapsed (collapsed loops have soft-tissue HU close to the organ's).
* The organ: a lobulated tube along a smooth 3D curve: uncinate process and thick head on the patient's right
  nestled in the duodenal C, a thin neck in front of the portal confluence, a body crossing the midline in front of
  the SMA and aorta, and a tapering tail rising towards the splenic hilum. Per case: size, thickness, rotation,
  position, how steeply the tail rises (this sets the number of positive slices: 8-15 of 40, median 11),
  lobulation, fatty clefts and HU (tissue 85-110 HU portal phase, 100-135 HU pancreatic phase; the mean over the
  label is lower, about 55-120 HU, because the gland is only a few voxels thick and its edge voxels are partly fat).

The organ is genuinely hard to separate in places: the duodenum (often collapsed, same HU) touches the head, the
splenic vein lies against the back of the body and tail, the fat plane to the stomach, jejunal loops, liver and
spleen is 0-1.3 voxels wide (per case), so on some slices they touch it. Organ-free slices always hold organ-like
intensities (liver, spleen, stomach wall, collapsed bowel, the duodenum's third part, kidney medulla,
intervertebral discs), so false positives are possible there.

Image formation
---------------
Tissue map -> HU per tissue (per-case contrast phase: portal venous, or about one case in four pancreatic/late
arterial) with tissue textures (fat strands, liver vessels, arciform spleen in the arterial phase, renal
cortex/medulla, lobular organ texture, mottled stool) -> partial-volume blur (Gaussian, 0.4-0.6 voxel in-plane,
0.3-0.5 slice along z) -> streak artefacts (bright/dark line pairs from dense sources, dark bands between them;
mild in some normal cases) -> CT-like noise: white noise shaped by a ramp-times-apodisation noise power spectrum
in-plane, slightly correlated along z, stronger in the body centre than at its edge; standard deviation 10-22 HU
(24-34 HU in low-dose cases) -> rounded to int16 and clipped to [-1024, 3071].

Hard cases
----------
Deterministic and independent of the seed: case ``i`` is hard when ``i % 4 == 3``, its kind is
``HARD_KINDS[(i // 4) % 4]`` (so cases 3, 7, 11, 15 are fatty_atrophic, bowel_contact, streak_lowdose, displaced,
then the cycle repeats). See :func:`case_kind`.

* ``fatty_atrophic``: a thin gland (68-78 % of the usual thickness, smaller volume) with strong lobulation and wide
  fatty clefts, tissue HU 35-60 (label mean about 15-40 HU): its boundary with the surrounding fat blurs and it
  matches muscle, fluid-filled bowel and nodes rather than the liver.
* ``bowel_contact``: a collapsed jejunal loop lies along the front and underside of the neck, body and tail with no
  fat plane, the duodenum is collapsed and touches the head, the stomach may touch the body; every collapsed loop
  has the organ's HU (within 5 HU) and texture. ``organ_voxels_touching_similar_hu`` in the case info: about 50-140
  (normal cases: median 40).
* ``streak_lowdose``: low-dose noise (24-34 HU) plus strong streaks (120-250 HU at the clip, fading with distance)
  and dark bands between three surgical clips: two next to the organ, one in the gallbladder bed (no gallbladder), on
  the organ's slices.
* ``displaced``: unusual position and orientation: rotated by 25-40 degrees about the neck (normal: up to 12),
  shifted sideways by up to 0.1 half-width (about 3 voxels) and forwards or backwards, up to ~5 slices higher or lower,
  and with a tail that runs steeply up (2-2.6 times the usual rise: many slices, small sections) or down (tail
  lower than the head).

All other cases are ``"normal"``; they still vary in size, position, orientation, phase, noise and number of
positive slices.

Dataset layout (:func:`write_dataset`)
--------------------------------------
``Dataset{id:03d}_{name}`` in the nnU-Net raw folder: ``imagesTr/{case}_0000.nii.gz`` + ``labelsTr/{case}.nii.gz``
for ``num_cases`` training cases (indices 0 .. num_cases-1), ``imagesTs/`` + ``labelsTs/`` for ``num_test`` held-out
cases (indices num_cases .. num_cases+num_test-1), case names ``{name}_{index:03d}``; images int16 HU, labels uint8,
spacing in the header in SimpleITK's (x, y, z) order. ``dataset.json`` (channel_names {"0": "CT"}, labels
{"background": 0, "organ": 1}, numTraining, file_ending ".nii.gz") and ``phantom_cases.json``: a dict with the
generator settings (``generator``, ``version``, ``seed``, ``shape``, ``spacing``, ``hard_kinds``, ``hard_rule``) and
``cases``, a list with one entry per case: ``name``, ``index``, ``split`` ("train"/"test"), ``hard`` (bool), ``kind``
("normal" or a hard kind), ``organ_fraction`` (organ voxels / all voxels), ``organ_voxels``, ``first_slice`` and
``last_slice`` (first/last z index with organ, inclusive), ``positive_slices``, ``organ_mean_hu``, ``noise_sd_hu``,
``phase``. Everything is deterministic given (seed, case index, shape): same arguments, same bytes.

Bad arguments are refused before anything is written (:class:`PhantomBInputError`, a ``ValueError`` whose message
names the parameter); a dataset id already used in the raw folder (any name) is refused with ``FileExistsError``
unless ``overwrite=True``, and overwrite only ever replaces a dataset of the same name that phantom_b wrote (it has
our ``phantom_cases.json``). The dataset is written into a hidden temporary sibling folder and renamed into place at
the end, so an interrupted run leaves no half-written dataset (and keeps the old one when overwriting).

Command line: ``python -m nnunetv2_ext.phantom_b -d 995 --num-cases 20 --num-test 8 --seed 0 [--raw-folder DIR]
[--overwrite] [--name PhantomB] [--shape Z Y X] [--spacing Z Y X]``; exit code 2 with a message on bad input.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import shutil
import sys
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

__all__ = ["DEFAULT_SHAPE", "DEFAULT_SPACING", "MIN_SHAPE", "HARD_KINDS", "PhantomBInputError", "case_kind",
           "generate_case", "write_dataset", "main"]

DEFAULT_SHAPE = (40, 64, 64)
DEFAULT_SPACING = (3.0, 1.0, 1.0)
MIN_SHAPE = (16, 32, 32)
MAX_SHAPE = (512, 1024, 1024)
HARD_KINDS = ("fatty_atrophic", "bowel_contact", "streak_lowdose", "displaced")
HARD_EVERY = 4
VERSION = 1

# z extent of the volume in units of the in-plane half width (used for tubes: a tube of in-plane radius r is r/LAM
# thick along w)
_LAM = 2.2


class PhantomBInputError(ValueError):
    """Bad argument to :func:`write_dataset` / :func:`generate_case`; the message names the parameter."""


def case_kind(index: int) -> str:
    """``"normal"`` or the hard kind of case ``index`` (hard when ``index % 4 == 3``, kinds in turn)."""
    if index % HARD_EVERY == HARD_EVERY - 1:
        return HARD_KINDS[(index // HARD_EVERY) % len(HARD_KINDS)]
    return "normal"


# ================================================================================================ tissues
(AIR, FAT, SKIN, MUSCLE, VFAT, CORT, TRAB, DISC, CANAL, LIVER, GB, SPLEEN, KCORT, KMED, AORTA, IVC, VEIN, ARTERY,
 GWALL, GLUMEN, BWALL, BLUMEN, STOOL, LUNG, TABLE, RIB, CLIP, NODE, ORGAN, CALC) = range(30)
_N_TISSUES = 30


# ================================================================================================ geometry helpers
class _Grid:
    """Normalised coordinates: u (x) and v (y) in units of half the smaller in-plane size, centred; w (z) in [0, 1]."""

    def __init__(self, shape):
        self.shape = Z, Y, X = shape
        self.s = min(Y, X) / 2.0
        self.u1 = ((np.arange(X) - (X - 1) / 2.0) / self.s).astype(np.float32)
        self.v1 = ((np.arange(Y) - (Y - 1) / 2.0) / self.s).astype(np.float32)
        self.w1 = (np.arange(Z) / (Z - 1.0)).astype(np.float32)
        self.u = self.u1[None, None, :]
        self.v = self.v1[None, :, None]
        self.w = self.w1[:, None, None]
        self.px = 1.0 / self.s  # one pixel in u/v units
        self.sl = 1.0 / (Z - 1.0)  # one slice in w units

    def _rng(self, c, r, scale, off, n):
        a = int(math.floor((c - r) * scale + off))
        b = int(math.ceil((c + r) * scale + off)) + 1
        return max(a, 0), min(b, n)

    def xr(self, c, r):
        return self._rng(c, r, self.s, (self.shape[2] - 1) / 2.0, self.shape[2])

    def yr(self, c, r):
        return self._rng(c, r, self.s, (self.shape[1] - 1) / 2.0, self.shape[1])

    def zr(self, c, r):
        return self._rng(c, r, self.shape[0] - 1.0, 0.0, self.shape[0])


def _spline(ctrl, n):
    """n points on a uniform Catmull-Rom spline through the rows of ctrl; also the control-index parameter."""
    ctrl = np.asarray(ctrl, dtype=np.float64)
    P = np.vstack([2 * ctrl[0] - ctrl[1], ctrl, 2 * ctrl[-1] - ctrl[-2]])
    segs = len(ctrl) - 1
    t = np.linspace(0.0, segs, n)
    i = np.minimum(t.astype(int), segs - 1)
    f = (t - i)[:, None]
    p0, p1, p2, p3 = P[i], P[i + 1], P[i + 2], P[i + 3]
    pts = 0.5 * (2 * p1 + (-p0 + p2) * f + (2 * p0 - 5 * p1 + 4 * p2 - p3) * f ** 2
                 + (-p0 + 3 * p1 - 3 * p2 + p3) * f ** 3)
    return pts, t


def _curve(ctrl, r_ctrl, rw_ctrl=None, step=0.3, min_step=0.015):
    """Samples a tube: points (N, 3), in-plane radii (N,), w radii (N,), parameter in [0, 1]. Samples are about
    ``step`` radii apart (at least ``min_step``, about half a pixel of the default grid)."""
    ctrl = np.asarray(ctrl, dtype=np.float64)
    r_ctrl = np.broadcast_to(np.asarray(r_ctrl, dtype=np.float64), (len(ctrl),))
    rw_ctrl = r_ctrl / _LAM if rw_ctrl is None else np.broadcast_to(np.asarray(rw_ctrl, np.float64), (len(ctrl),))
    d = np.diff(ctrl, axis=0)
    length = np.sum(np.sqrt(d[:, 0] ** 2 + d[:, 1] ** 2 + (d[:, 2] * _LAM) ** 2))
    n = int(np.clip(length / max(step * r_ctrl.min(), min_step), 8, 600))
    pts, t = _spline(ctrl, n)
    k = np.arange(len(ctrl))
    return pts, np.interp(t, k, r_ctrl), np.interp(t, k, rw_ctrl), t / (len(ctrl) - 1)


def _tube(g, pts, rxy, rw, reach=1.8, group=12):
    """Union of ellipsoids along a sampled curve. Returns ``(q, near, bb)``: within the bounding box ``bb`` (a tuple of
    slices) the normalised squared distance q (inside: q < 1; inf far away) and the index of the nearest sample (-1
    far away). Works on groups of consecutive samples and their own bounding boxes."""
    pts = np.asarray(pts, np.float32)
    rxy = np.asarray(rxy, np.float32)
    rw = np.asarray(rw, np.float32)
    boxes = []
    for s0 in range(0, len(pts), group):
        P, R, RW = pts[s0:s0 + group], rxy[s0:s0 + group], rw[s0:s0 + group]
        lo, hi = P.min(0), P.max(0)
        rr = np.array([R.max(), R.max(), RW.max()]) * reach
        x0, x1 = g.xr(0.5 * (lo[0] + hi[0]), 0.5 * (hi[0] - lo[0]) + rr[0])
        y0, y1 = g.yr(0.5 * (lo[1] + hi[1]), 0.5 * (hi[1] - lo[1]) + rr[1])
        z0, z1 = g.zr(0.5 * (lo[2] + hi[2]), 0.5 * (hi[2] - lo[2]) + rr[2])
        if x0 < x1 and y0 < y1 and z0 < z1:
            boxes.append((s0, z0, z1, y0, y1, x0, x1))
    if not boxes:
        bb = (slice(0, 0), slice(0, 0), slice(0, 0))
        return np.zeros((0, 0, 0), np.float32), np.zeros((0, 0, 0), np.int32), bb
    B = np.array([b[1:] for b in boxes])
    Z0, Y0, X0 = B[:, 0].min(), B[:, 2].min(), B[:, 4].min()
    Z1, Y1, X1 = B[:, 1].max(), B[:, 3].max(), B[:, 5].max()
    q = np.full((Z1 - Z0, Y1 - Y0, X1 - X0), np.inf, np.float32)
    near = np.full(q.shape, -1, np.int32)
    for s0, z0, z1, y0, y1, x0, x1 in boxes:
        P, R, RW = pts[s0:s0 + group], rxy[s0:s0 + group], rw[s0:s0 + group]
        du2 = (g.u1[x0:x1, None] - P[:, 0]) ** 2 / R ** 2  # (nx, G)
        dv2 = (g.v1[y0:y1, None] - P[:, 1]) ** 2 / R ** 2  # (ny, G)
        dw2 = (g.w1[z0:z1, None] - P[:, 2]) ** 2 / RW ** 2  # (nz, G)
        qq = dw2[:, None, None, :] + dv2[None, :, None, :] + du2[None, None, :, :]
        k = qq.argmin(-1)
        qmin = np.take_along_axis(qq, k[..., None], -1)[..., 0]
        loc = (slice(z0 - Z0, z1 - Z0), slice(y0 - Y0, y1 - Y0), slice(x0 - X0, x1 - X0))
        sub = q[loc]
        m = qmin < sub
        sub[m] = qmin[m]
        near[loc][m] = k[m] + s0
    return q, near, (slice(Z0, Z1), slice(Y0, Y1), slice(X0, X1))


def _full(a, bb, shape, fill):
    out = np.full(shape, fill, a.dtype)
    out[bb] = a
    return out


def _ell(g, cu, cv, ru, rv, ang=0.0):
    """Normalised squared distance to an in-plane ellipse (parameters may be (Z, 1, 1) arrays: one per slice)."""
    du = g.u - cu
    dv = g.v - cv
    if ang:
        c, s = math.cos(ang), math.sin(ang)
        du, dv = c * du + s * dv, -s * du + c * dv
    ru = np.maximum(ru, 1e-4)
    rv = np.maximum(rv, 1e-4)
    return (du / ru) ** 2 + (dv / rv) ** 2


def _ellipsoid(g, c, r, ang=0.0):
    return _ell(g, c[0], c[1], r[0], r[1], ang) + ((g.w - c[2]) / r[2]) ** 2


def _smooth_noise(rng, shape, sig):
    """Unit-variance Gaussian random field, Gaussian correlation with sigma (z, y, x) in voxels (periodic)."""
    n = rng.standard_normal(shape, dtype=np.float32)
    F = np.fft.rfftn(n)
    fz = np.fft.fftfreq(shape[0])[:, None, None]
    fy = np.fft.fftfreq(shape[1])[None, :, None]
    fx = np.fft.rfftfreq(shape[2])[None, None, :]
    H = np.exp(-2 * np.pi ** 2 * ((sig[0] * fz) ** 2 + (sig[1] * fy) ** 2 + (sig[2] * fx) ** 2))
    out = np.fft.irfftn(F * H, s=shape, axes=(0, 1, 2)).astype(np.float32)
    out -= out.mean()
    out /= out.std() + 1e-12
    return out


def _blur1d(a, sigma, axis):
    if sigma <= 0:
        return a
    r = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = [(0, 0)] * a.ndim
    pad[axis] = (r, r)
    ap = np.pad(a, pad, mode="edge")
    out = np.zeros_like(a)
    n = a.shape[axis]
    for i, kv in enumerate(k):
        sl = [slice(None)] * a.ndim
        sl[axis] = slice(i, i + n)
        out += np.float32(kv) * ap[tuple(sl)]
    return out


def _ct_noise(rng, shape, fc, z_corr):
    """Unit-variance noise with a CT-like in-plane noise power spectrum (ramp x apodisation), mildly correlated in z."""
    n = rng.standard_normal(shape, dtype=np.float32)
    F = np.fft.rfft2(n, axes=(1, 2))
    fy = np.fft.fftfreq(shape[1])[:, None]
    fx = np.fft.rfftfreq(shape[2])[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    H = (f + 0.03) * np.exp(-(f / fc) ** 2)  # amplitude filter: sqrt of NPS ~ f^2 exp(-2 f^2/fc^2)
    out = np.fft.irfft2(F * H[None], s=shape[1:], axes=(1, 2)).astype(np.float32)
    out = _blur1d(out, z_corr, 0)
    out -= out.mean()
    out /= out.std() + 1e-12
    return out


# ================================================================================================ the case generator
def _check_int(value, name, lo=None, hi=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise PhantomBInputError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise PhantomBInputError(f"{name} must be an integer {rng}, got {value}")
    return value


def _check_shape(shape) -> Tuple[int, int, int]:
    try:
        vals = tuple(shape)
    except TypeError:
        raise PhantomBInputError(f"shape must be three integers (z, y, x), got {shape!r}") from None
    if len(vals) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in vals):
        raise PhantomBInputError(f"shape must be three integers (z, y, x), got {shape!r}")
    vals = tuple(int(v) for v in vals)
    if any(v < m for v, m in zip(vals, MIN_SHAPE)):
        raise PhantomBInputError(f"shape {vals} is too small: at least {MIN_SHAPE} (z, y, x)")
    if any(v > m for v, m in zip(vals, MAX_SHAPE)):
        raise PhantomBInputError(f"shape {vals} is too large: at most {MAX_SHAPE} (z, y, x)")
    return vals


def _check_spacing(spacing) -> Tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        raise PhantomBInputError(f"spacing must be three positive numbers (z, y, x) in mm, got {spacing!r}") from None
    if len(vals) != 3 or not all(math.isfinite(v) and v > 0 for v in vals):
        raise PhantomBInputError(f"spacing must be three positive numbers (z, y, x) in mm, got {spacing!r}")
    return vals


def generate_case(seed: int = 0, index: int = 0, shape: Sequence[int] = DEFAULT_SHAPE):
    """One case: ``(image, label, info)``; image int16 HU (z, y, x), label uint8 (1 = organ), info a dict (kind, hard,
    organ_fraction, organ_voxels, first_slice, last_slice, positive_slices, organ_mean_hu, noise_sd_hu, phase, and a
    few kind-specific numbers). Deterministic given (seed, index, shape)."""
    seed = _check_int(seed, "seed", 0)
    index = _check_int(index, "index", 0)
    shape = _check_shape(shape)
    return _Case(seed, index, shape).run()


class _Case:
    def __init__(self, seed, index, shape):
        self.seed, self.index, self.shape = seed, index, shape
        self.kind = case_kind(index)
        self.rng = np.random.default_rng([seed, index, 0x50B])
        self.g = _Grid(shape)
        self.tis = np.zeros(shape, np.uint8)
        # lumen content codes: 1 collapsed, 2 fluid, 3 gas, 4 positive contrast, 5 stool, 6 food
        self.lumen_kind = np.zeros(shape, np.uint8)
        self.info: Dict = {}

    # ---------------------------------------------------------------------------------------------- painting
    def paint(self, mask, tissue, allowed=None, forbid=None, bb=None):
        """tis[mask] = tissue where the current tissue is in ``allowed`` (None: anything) and not ``forbid`` (a
        full-size mask). With a bounding box ``bb`` (tuple of slices), ``mask`` covers only that box. Returns the
        painted mask (of the box when bb is given)."""
        tis = self.tis if bb is None else self.tis[bb]
        mask = np.broadcast_to(mask, tis.shape)
        if allowed is not None:
            lut = np.zeros(_N_TISSUES, bool)
            lut[list(allowed)] = True
            mask = mask & lut[tis]
        if forbid is not None:
            mask = mask & ~(forbid if bb is None else forbid[bb])
        tis[mask] = tissue
        return mask

    def paint_tube(self, ctrl, r, tissue, allowed=(VFAT,), forbid=None):
        pts, rr, rw, _ = _curve(ctrl, r)
        q, _, bb = _tube(self.g, pts, rr, rw)
        return self.paint(q < 1, tissue, allowed=allowed, forbid=forbid, bb=bb)

    def U(self, a, b):
        return float(self.rng.uniform(a, b))

    def field(self, sig):
        """Smooth unit-variance random field; correlation lengths (z, y, x) given in voxels of the default grid
        (40, 64, 64), scaled to this grid so that textures follow the anatomy."""
        Z, Y, X = self.shape
        gs = min(Y, X) / 64.0
        return _smooth_noise(self.rng, self.shape, (sig[0] * Z / 40.0, sig[1] * gs, sig[2] * gs))

    # anatomical (nominal body) -> this case's coordinates
    def T(self, p):
        p = np.asarray(p, dtype=np.float64).copy()
        p[..., 0] = p[..., 0] * self.kx
        p[..., 1] = self.v0 + (p[..., 1] - 0.05) * self.ky
        p[..., 2] = self.L + p[..., 2] * self.kz
        return p

    # ---------------------------------------------------------------------------------------------- main
    def run(self):
        self.case_parameters()
        self.body()
        self.spine_and_retroperitoneum()
        self.organ()
        self.organ_vessels_and_duodenum()
        self.upper_abdomen()
        self.colon_and_small_bowel()
        self.small_things()
        hu = self.intensities()
        hu = self.image_formation(hu)
        label = (self.tis == ORGAN).astype(np.uint8)
        image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
        return image, label, self.summary(image, label)

    def case_parameters(self):
        U, rng, kind = self.U, self.rng, self.kind
        self.phase = "pancreatic" if rng.random() < 0.25 else "portal"
        self.L = U(0.46, 0.54)  # w of the portal confluence / organ neck
        self.kz = U(0.92, 1.08)
        # body: cavity half axes, wall thicknesses
        self.A_c, self.B_c = U(0.70, 0.80), U(0.50, 0.56)
        self.t_mw0 = U(0.035, 0.05)
        self.t_sc0 = U(0.04, 0.15)
        self.v0 = U(0.02, 0.07)
        self.kx, self.ky = self.A_c / 0.755, self.B_c / 0.535
        self.oral_contrast = rng.random() < 0.55
        self.noise_sd = U(10, 22) if kind != "streak_lowdose" else U(24, 34)

    # ---------------------------------------------------------------------------------------------- body
    def body(self):
        g, U, rng = self.g, self.U, self.rng
        a = min(self.A_c + self.t_sc0 + self.t_mw0 + 0.02, 0.97)
        b_ant = min(self.B_c + self.t_sc0 + self.t_mw0 + 0.01, 0.97 + self.v0)
        b_post = min(self.B_c + 0.6 * self.t_sc0 + self.t_mw0 + 0.08, 0.90 - self.v0)
        p_ant, p_post = U(2.1, 2.6), U(2.9, 3.6)
        a_w = a * (1 + U(-0.05, 0.05) * (g.w - 0.5))
        dv = g.v - self.v0
        th = np.arctan2(dv, g.u)  # (1, Y, X)
        harm = sum(U(0.006, 0.018) * np.cos(k * th + U(0, 2 * np.pi)) for k in (2, 3, 4, 5))
        bb = np.where(dv > 0, b_post, b_ant)
        pp = np.where(dv > 0, p_post, p_ant)
        rho = ((np.abs(g.u) / a_w) ** pp + (np.abs(dv) / bb) ** pp) ** (1.0 / pp) / (1 + harm)
        r = np.sqrt(g.u ** 2 + dv ** 2)
        depth = r * (1 - rho) / np.maximum(rho, 1e-6)  # radial distance to the skin (inside: > 0)
        self.theta, self.rho, self.depth = th, rho, depth
        inside = rho < 1
        t_sc = self.t_sc0 * (1 + 0.3 * np.cos(2 * th) + 0.15 * np.sin(th)) * (1 + 0.1 * np.cos(3 * th + U(0, 6)))
        lateral = np.abs(np.cos(th))
        t_mw = self.t_mw0 * (0.8 + 0.6 * lateral)
        self.paint(inside, FAT)
        self.paint(inside & (depth < 0.6 * g.px), SKIN)
        wall = inside & (depth >= t_sc) & (depth < t_sc + t_mw)
        self.paint(wall, MUSCLE)
        # lateral muscle layers separated by thin fat planes; linea alba anteriorly
        rel = (depth - t_sc) / t_mw
        for f in (0.36, 0.68):
            self.paint(wall & (lateral > 0.55) & (np.abs(rel - f) < 0.07), FAT)
        self.paint(wall & (dv < 0) & (np.abs(g.u) < 0.6 * g.px + 0.01), FAT)
        self.cavity = inside & (depth >= t_sc + t_mw)
        self.paint(self.cavity, VFAT)
        self.t_sc, self.t_mw = t_sc, t_mw
        # table: a curved strip under the back
        vb = self.v0 + b_post
        vt = vb + U(0.05, 0.09) + 0.05 * g.u ** 2
        table = (np.abs(g.v - vt) < 1.1 * g.px) & (np.abs(g.u) < 0.95) & (rho > 1.08)
        self.paint(np.broadcast_to(table, g.shape), TABLE)

    # ---------------------------------------------------------------------------------------------- spine etc.
    def spine_and_retroperitoneum(self):
        g, U, rng, T = self.g, self.U, self.rng, self.T
        soft = (FAT, VFAT, MUSCLE)
        vb_c = T([0.0, 0.33, 0.0])
        r_vb = np.array([0.13 * self.kx, 0.11 * self.ky]) * U(0.9, 1.1)
        q_vb = _ell(g, vb_c[0], vb_c[1], r_vb[0], r_vb[1])
        q_notch = _ell(g, vb_c[0], vb_c[1] + r_vb[1] * 1.05, 0.05, 0.03)
        vb = (q_vb < 1) & (q_notch > 1)
        # discs: ~2 slices every vertebral height
        height = U(0.2, 0.24) * self.kz
        phase = U(0, height)
        wmod = np.mod(g.w - phase, height)
        disc_w = (wmod < U(0.035, 0.05))  # (Z, 1, 1)
        shell = vb & (q_vb > (1 - 1.4 * g.px / r_vb.min()) ** 2)
        self.paint(vb & disc_w, DISC)
        self.paint(vb & ~disc_w, TRAB)
        self.paint(shell & ~disc_w, CORT)
        # canal and posterior arch
        cc = T([0.0, 0.51, 0.0])
        rc = 0.055 * self.kx
        q_c = _ell(g, cc[0], cc[1], rc, rc * 0.9)
        arch = (q_c < 2.6) & (q_c >= 1) & (g.v > cc[1] - 0.3 * rc)
        spin = (np.abs(g.u - cc[0]) < 0.02 + 0.5 * g.px) & (g.v > cc[1]) & (g.v < cc[1] + 0.17 * self.ky)
        trans = ((np.abs(g.v - (vb_c[1] + 0.12 * self.ky + 0.12 * np.abs(g.u - cc[0]))) < 0.012 + 0.5 * g.px)
                 & (np.abs(g.u - cc[0]) < 0.22 * self.kx))
        trans = trans & (np.abs(wmod - 0.5 * height) < 0.15 * height)
        self.paint(arch | spin | trans, TRAB, allowed=soft)
        self.paint((q_c < 1) & ~vb, CANAL)
        # paraspinal and psoas muscles
        for s in (-1, 1):
            pc = T([s * 0.16, 0.57, 0.0])
            self.paint(_ell(g, pc[0], pc[1], 0.12 * self.kx, 0.095 * self.ky, s * 0.2) < 1, MUSCLE, allowed=soft)
            grow = np.clip((0.25 - (g.w - self.L) / self.kz) / 0.7, 0, 1)
            rp = 0.025 + 0.085 * grow
            psc = T([s * 0.15, 0.31, 0.0])
            self.paint(_ell(g, psc[0] + s * rp * 0.6, psc[1], rp, rp * 0.85) < 1, MUSCLE, allowed=(VFAT,))
        # kidneys: cortex, medulla (pyramids), sinus fat with the hilum facing front-medially
        self.kidney_q = []
        for s in (-1, 1):
            kc = T([s * 0.37, 0.29, (-0.13 if s < 0 else -0.07) + U(-0.03, 0.03)])
            ang = s * U(0.4, 0.8)
            r = np.array([0.10, 0.16, 0.20]) * U(0.9, 1.1)
            q = _ellipsoid(g, kc, (r[0] * self.kx, r[1] * self.ky, r[2] * self.kz), ang)
            hil = _ellipsoid(g, (kc[0] - s * 0.07, kc[1] - 0.04, kc[2]), (0.06, 0.06, 0.1), 0.0)
            kid = (q < 1) & (hil > 1)
            self.paint(kid, KCORT, allowed=(VFAT,))
            med = kid & (q < 0.55) & (self.tex_k() > -0.2)
            self.paint(med, KMED, allowed=(KCORT,))
            self.kidney_q.append((kc, q))
        # aorta and IVC (vertical, slightly wandering)
        wv = (g.w - self.L) / self.kz
        ao = T([0.065, 0.14, 0.0])
        self.ao_u = ao[0] + 0.01 * np.sin(3 * wv)
        self.ao_v = ao[1] + 0.015 * wv
        self.ao_r = 0.062 * U(0.85, 1.15)
        q_ao = _ell(g, self.ao_u, self.ao_v, self.ao_r, self.ao_r)
        self.paint(q_ao < 1, AORTA, allowed=(VFAT, MUSCLE))
        if rng.random() < 0.4:  # calcified plaques on the wall
            th = np.arctan2(g.v - self.ao_v, g.u - self.ao_u)
            for _ in range(int(rng.integers(1, 4))):
                c0, wc = U(-np.pi, np.pi), U(0, 1)
                m = (np.abs(np.angle(np.exp(1j * (th - c0)))) < 0.5) & (q_ao > 0.6) & (q_ao < 1.0)
                self.paint(m & (np.abs(g.w - wc) < U(0.03, 0.1)), CALC, allowed=(AORTA,))
        ivc = T([-0.14, 0.15, 0.0])
        self.ivc = ivc
        self.paint(_ell(g, ivc[0] + 0.02 * wv, ivc[1], 0.07 * self.kx, 0.045 * self.ky) < 1, IVC,
                   allowed=(VFAT, MUSCLE))
        # ribs around the upper half, lung bases in the top slices
        th, depth = self.theta, self.depth
        rib_band = np.abs(depth - self.t_sc - self.t_mw * 0.5) < 0.008 + 0.5 * g.px  # (Z, Y, X)
        for s in (-1, 1):
            for k in range(int(rng.integers(4, 7))):
                wk = self.L + (U(-0.1, 0.45) if k else U(-0.2, -0.05)) * self.kz
                phi0 = U(0.8, 1.9)  # angle from the posterior midline (ribs start lateral to the paraspinals)
                slope = U(3.0, 6.0)
                half, dmax = U(0.04, 0.07), U(0.07, 0.16)
                z0, z1 = g.zr(wk, half)
                for z in range(z0, z1):
                    if abs(g.w1[z] - wk) >= half:
                        continue
                    phi = phi0 + slope * (g.w1[z] - wk)  # ribs run down towards the front
                    if not 0.8 <= phi <= 2.2:
                        continue
                    ang = np.pi / 2 - s * phi  # image angle
                    dang = np.abs(np.mod(th[0] - ang + np.pi, 2 * np.pi) - np.pi)
                    rib = (dang < dmax) & rib_band[z]
                    lut = np.zeros(_N_TISSUES, bool)
                    lut[[MUSCLE, FAT, VFAT]] = True
                    rib &= lut[self.tis[z]]
                    self.tis[z][rib] = RIB
        top = np.clip((g.w - (self.L + 0.3 * self.kz)) / 0.25, 0, 1)
        for s in (-1, 1):
            lc = T([s * 0.42, 0.42, 0.0])
            rl = 0.28 * top
            self.paint((_ell(g, lc[0], lc[1] + 0.1 * (1 - top), rl * 1.1, rl * 0.8) < 1) & self.cavity, LUNG,
                       allowed=(VFAT, MUSCLE))

    def tex_k(self):
        if not hasattr(self, "_tk"):
            self._tk = self.field((0.6, 1.2, 1.2))
        return self._tk

    # ---------------------------------------------------------------------------------------------- the organ
    def organ(self):
        g, U, rng, kind = self.g, self.U, self.rng, self.kind
        ctrl = np.array([[-0.10, 0.09, -0.10],   # uncinate
                         [-0.20, 0.00, -0.055],  # head
                         [-0.05, -0.09, 0.0],    # neck
                         [0.13, -0.11, 0.03],    # body
                         [0.33, -0.04, 0.06],    # body/tail
                         [0.48, 0.10, 0.085]])   # tail tip
        r_ctrl = np.array([0.065, 0.12, 0.075, 0.078, 0.068, 0.042])
        rw_ctrl = np.array([0.04, 0.08, 0.048, 0.046, 0.042, 0.03])
        size, size_z = U(0.95, 1.2), U(0.9, 1.15)
        rise = U(0.6, 1.6)
        rot = np.deg2rad(U(-12, 12))
        shift = np.array([U(-0.04, 0.04), U(-0.04, 0.04)])
        dwc = U(-0.03, 0.03)
        length = U(0.9, 1.1)
        lob, cleft_thr, cleft_max = U(0.18, 0.28), U(-1.6, -1.1), U(0.35, 0.55)
        if kind == "fatty_atrophic":
            size, size_z = size * U(0.68, 0.78), size_z * U(0.85, 0.95)
            lob, cleft_thr, cleft_max = U(0.32, 0.42), U(-0.6, -0.2), U(0.5, 0.7)
        elif kind == "displaced":
            rot = np.deg2rad(U(25, 40)) * (1 if rng.random() < 0.5 else -1)
            shift = np.array([U(-0.1, 0.1), 0.05 if rng.random() < 0.5 else -0.07])
            rise = U(2.0, 2.6) if rng.random() < 0.5 else U(-1.0, -0.5)
            dwc = U(0.07, 0.12) * (1 if rng.random() < 0.5 else -1)
        ctrl = ctrl + rng.normal(0, 0.012, ctrl.shape)
        ctrl[:, 2] = ctrl[:, 2] * size_z
        ctrl[3:, 2] = ctrl[2, 2] + (ctrl[3:, 2] - ctrl[2, 2]) * rise
        # in-plane: lengthen and rotate about the neck, then shift
        neck = ctrl[2, :2].copy()
        d = (ctrl[:, :2] - neck) * length
        c, s = math.cos(rot), math.sin(rot)
        ctrl[:, :2] = neck + np.stack([c * d[:, 0] - s * d[:, 1], s * d[:, 0] + c * d[:, 1]], 1) + shift
        ctrl[:, 2] += dwc
        ctrl = self.T(ctrl)
        r_ctrl = r_ctrl * size * math.sqrt(self.kx * self.ky)
        rw_ctrl = rw_ctrl * size_z * self.kz
        pts, rxy, rw, t = _curve(ctrl, r_ctrl, rw_ctrl, step=0.25)
        # keep organ-free slices at both ends: compress along w if needed, then shift into the allowed range
        Z = self.shape[0]
        m = max(2, int(math.ceil(0.1 * Z)))
        lo_allowed, hi_allowed = (m + 0.6) * g.sl, 1 - (m + 0.6) * g.sl
        reach = 1 + 2.2 * lob
        lo, hi = np.min(pts[:, 2] - rw * reach), np.max(pts[:, 2] + rw * reach)
        if hi - lo > hi_allowed - lo_allowed:
            f = (hi_allowed - lo_allowed) / (hi - lo)
            mid = 0.5 * (hi + lo)
            pts[:, 2] = mid + (pts[:, 2] - mid) * f
            rw = rw * f
            lo, hi = np.min(pts[:, 2] - rw * reach), np.max(pts[:, 2] + rw * reach)
        pts[:, 2] += max(0.0, lo_allowed - lo) - max(0.0, hi - hi_allowed)
        self.min_free = m
        # rasterise: lobulated contour (smooth noise on the threshold)
        q, near, bb = _tube(g, pts, rxy, rw, reach=reach + 0.6)
        q, near = _full(q, bb, g.shape, np.inf), _full(near, bb, g.shape, -1)
        self.n_lob = self.field((0.5, 1.0, 1.0))
        thr = 1 + lob * np.clip(self.n_lob, -2.2, 2.2)
        organ = q < thr ** 2
        self.paint(organ, ORGAN, allowed=(VFAT,))
        # keep the largest 26-connected component (contiguous slices by construction)
        om = self.tis[bb] == ORGAN
        ccf = sitk.ConnectedComponentImageFilter()
        ccf.SetFullyConnected(True)
        ccf.SetNumberOfThreads(1)
        rlf = sitk.RelabelComponentImageFilter()
        rlf.SetNumberOfThreads(1)
        cc = sitk.GetArrayFromImage(rlf.Execute(ccf.Execute(sitk.GetImageFromArray(om.astype(np.uint8)))))
        self.tis[bb][om & (cc != 1)] = VFAT
        # keep-out zone: a fat plane of ~1-1.5 voxels around the organ for most neighbours (none in bowel_contact)
        gap_px = 0.0 if kind == "bowel_contact" else U(0.0, 1.3)
        rn = np.where(near >= 0, rxy[np.maximum(near, 0)], 1.0)
        self.peri = (q < (thr + gap_px * g.px / rn) ** 2) & (self.tis != ORGAN)
        self.o_pts, self.o_rxy, self.o_rw, self.o_t = pts, rxy, rw, t
        self.o_cleft = (cleft_thr, cleft_max)
        self.info.update(organ_rotation_deg=round(float(np.rad2deg(rot)), 1), tail_rise=round(float(rise), 2))

    def _organ_point(self, t):
        i = int(np.argmin(np.abs(self.o_t - t)))
        return self.o_pts[i], self.o_rxy[i], self.o_rw[i], i

    def _posterior_normal(self, i):
        pts = self.o_pts
        a, b = pts[max(i - 2, 0), :2], pts[min(i + 2, len(pts) - 1), :2]
        tan = (b - a) / (np.linalg.norm(b - a) + 1e-9)
        n = np.array([-tan[1], tan[0]])
        return n if n[1] > 0 else -n

    # ---------------------------------------------------------------------------------------------- vessels, duodenum
    def organ_vessels_and_duodenum(self):
        g, U, rng, T, kind = self.g, self.U, self.rng, self.T, self.kind
        free = (VFAT,)
        # splenic vein along the back of body and tail, joining the SMV behind the neck
        sv_r = U(0.026, 0.036)
        gap = U(-0.005, 0.012)
        sv = []
        for tt in np.linspace(0.97, 0.42, 9):
            p, r, rw, i = self._organ_point(tt)
            n = self._posterior_normal(i)
            sv.append([p[0] + n[0] * (r + sv_r + gap), p[1] + n[1] * (r + sv_r + gap), p[2] - 0.3 * rw])
        neck, rn, rwn, i_n = self._organ_point(0.4)
        nn = self._posterior_normal(i_n)
        conf = np.array([neck[0] + nn[0] * (rn + 0.04), neck[1] + nn[1] * (rn + 0.04), neck[2] - 0.01])
        sv.append(list(conf))
        tail = sv[0]
        sv.insert(0, [tail[0] + 0.08, tail[1] + 0.07, tail[2] + 0.02])  # to the splenic hilum
        self.paint_tube(sv, sv_r, VEIN, allowed=free)
        # SMV below the confluence, portal vein up to the liver hilum
        smv = [conf, conf + [-0.01, -0.02, -0.12], conf + [-0.04, -0.06, -0.32]]
        self.paint_tube(smv, U(0.03, 0.04), VEIN, allowed=free)
        self.porta = T([-0.36, -0.02, 0.2])
        pv = [conf, conf + [-0.08, -0.03, 0.08], self.porta]
        self.paint_tube(pv, U(0.035, 0.045), VEIN, allowed=free + (LIVER,))
        # SMA from the aorta, behind the neck/body, with its fat collar
        z_ao = int(np.clip(round(conf[2] / g.sl), 0, self.shape[0] - 1))
        ao_u, ao_v = float(np.ravel(self.ao_u)[z_ao]), float(np.ravel(self.ao_v)[z_ao])
        sma_c = [conf[0] + 0.075, conf[1] + 0.035]
        sma = [[ao_u, ao_v - self.ao_r * 0.6, conf[2] + 0.08], [sma_c[0], sma_c[1], conf[2]],
               [sma_c[0] + 0.01, sma_c[1] - 0.05, conf[2] - 0.32]]
        pts, r, rw, _ = _curve(sma, U(0.02, 0.026))
        q_sma, _, bb = _tube(g, pts, r, rw, reach=2.4)
        self.paint(q_sma < 1, ARTERY, allowed=free, bb=bb)
        self.collar = _full(q_sma < 5.0, bb, g.shape, False)
        self.peri_collar = self.peri | self.collar
        # left renal vein between SMA and aorta into the IVC
        (kc, _), = [k for k in self.kidney_q if k[0][0] > 0]
        w_lrv = kc[2] + 0.03
        lrv = [[kc[0] - 0.08, kc[1] - 0.05, w_lrv], [ao_u, ao_v - self.ao_r - 0.01, w_lrv],
               [self.ivc[0] + 0.04, self.ivc[1], w_lrv]]
        self.paint_tube(lrv, 0.025, VEIN, allowed=free)
        # duodenal C-loop around the head; D3 runs below the organ between SMA and aorta
        H, rh, rwh, _ = self._organ_point(0.2)
        w_low = float(np.min(self.o_pts[:, 2] - self.o_rw))
        rd = U(0.055, 0.075)
        dgap = -0.01 if kind == "bowel_contact" else U(-0.01, 0.02)
        off = rh + rd + dgap
        self.pylorus = T([-0.08, -0.30, 0.09])
        duo = [self.pylorus, [H[0] - 0.08, H[1] - 0.18, H[2] + 0.09], [H[0] - off, H[1] - 0.05, H[2] + 0.04],
               [H[0] - off, H[1] + 0.03, H[2] - 0.03], [H[0] - off * 0.8, H[1] + 0.08, w_low - 0.01],
               [H[0] + 0.06, H[1] + 0.13, w_low - rd / _LAM - 0.03], [ao_u, ao_v - self.ao_r - rd * 0.7,
                                                                       w_low - rd / _LAM - 0.03],
               [ao_u + 0.13, ao_v - 0.12, w_low + 0.01], [ao_u + 0.18, ao_v - 0.18, w_low + 0.06]]
        options = ["collapsed", "fluid", "gas", "contrast" if self.oral_contrast else "fluid"]
        self.duo_content = ("collapsed" if kind == "bowel_contact"
                            else str(rng.choice(options, p=[0.45, 0.3, 0.1, 0.15])))
        self.bowel(duo, rd, self.duo_content, allowed=free, keep_out=None)
        self.dj = np.array(duo[-1])

    def bowel(self, ctrl, r, content, allowed=(VFAT,), keep_out="peri", wall=None, haustra=0.0, lumen=BLUMEN):
        """Paints a bowel segment: wall (BWALL) and lumen (content: collapsed / fluid / gas / contrast / stool /
        food, with an air-fluid level where gas sits on fluid). Returns the painted mask."""
        g, U = self.g, self.U
        pts, rr, rw, t = _curve(ctrl, r)
        if haustra:
            mod = 1 + haustra * np.cos(2 * np.pi * np.cumsum(np.r_[0, np.linalg.norm(np.diff(pts[:, :2], axis=0),
                                                                                     axis=1)]) / U(0.1, 0.14))
            rr, rw = rr * mod, rw * mod
        q, near, bb = _tube(g, pts, rr, rw)
        forbid = None
        if keep_out == "peri":
            forbid = self.peri_collar
        whole = self.paint(q < 1, BWALL if content != "collapsed" else BLUMEN, allowed=allowed, forbid=forbid,
                           bb=bb)
        wall = wall if wall is not None else U(0.018, 0.028)
        rn = np.where(near >= 0, rr[np.maximum(near, 0)], 1.0)
        inner = whole & (q < np.clip(1 - wall / rn, 0.05, 1) ** 2)
        lk = self.lumen_kind[bb]
        if content == "collapsed":
            lk[whole] = 1
            return
        code = {"fluid": 2, "gas": 3, "contrast": 4, "stool": 5, "food": 6}[content]
        self.tis[bb][inner] = lumen
        lk[inner] = code
        if content in ("fluid", "contrast", "food", "stool") and inner.any():
            # non-dependent gas (the patient lies on the back: gas at the front, small v)
            frac = U(0.0, 0.5) if content != "stool" else U(0.1, 0.5)
            if self.rng.random() < 0.5:
                vloc = g.v1[bb[1]][None, :, None]
                level = np.quantile(np.broadcast_to(vloc, inner.shape)[inner], frac)
                lk[inner & (vloc < level)] = 3

    # ---------------------------------------------------------------------------------------------- upper abdomen
    def upper_abdomen(self):
        g, U, rng, T, kind = self.g, self.U, self.rng, self.T, self.kind
        peri = self.peri_collar
        wv = (g.w - self.L) / self.kz
        # liver: right lobe tapering to a lateral tip below, left lobe high up across the midline
        f = np.clip((wv + U(0.18, 0.26)) / U(0.5, 0.6), 0, 1)
        c_rl = ((-0.72 + 0.32 * f) * self.kx, self.v0 + (0.02 - 0.06 * f - 0.05) * self.ky)
        q_r = _ell(g, c_rl[0], c_rl[1], (0.06 + 0.36 * f) * self.kx, (0.14 + 0.46 * f) * self.ky)
        gl = np.clip((wv - U(0.1, 0.18)) / 0.3, 0, 1)
        c_ll = T([0.02, -0.36, 0.0])
        q_l = _ell(g, c_ll[0], c_ll[1], 0.40 * gl * self.kx, 0.17 * gl * self.ky, -0.15)
        liver = ((q_r < 1) | (q_l < 1)) & self.cavity & (self.depth > self.t_sc + self.t_mw + 0.5 * g.px)
        self.paint(liver, LIVER, allowed=(VFAT, VEIN), forbid=peri)
        # gallbladder (absent after cholecystectomy: the streak case gets clips in its bed instead)
        self.gb_c = T([-0.36, -0.30, 0.04])
        if kind != "streak_lowdose" and rng.random() < 0.85:
            gb = _ellipsoid(g, self.gb_c, (0.075 * U(0.8, 1.3), 0.11 * U(0.8, 1.3), 0.1), U(-0.6, 0.2)) < 1
            self.paint(gb, GB, allowed=(VFAT, LIVER), forbid=peri)
        # spleen: posterior-left crescent
        hs = np.sqrt(np.clip(1 - ((wv - U(0.26, 0.34)) / U(0.28, 0.34)) ** 2, 0, 1))
        sc = T([0.60, 0.26, 0.0])
        q_o = _ell(g, sc[0], sc[1], 0.19 * hs * self.kx, 0.30 * hs * self.ky, 0.5)
        q_i = _ell(g, sc[0] - 0.17, sc[1] - 0.10, 0.16 * hs, 0.24 * hs, 0.5)
        self.paint((q_o < 1) & (q_i > 1) & self.cavity, SPLEEN, allowed=(VFAT, VEIN), forbid=peri)
        # stomach: fundus high at the back, body, antrum to the pylorus; rugae; air-fluid level or food
        dist = U(0.8, 1.15)
        st = [T([0.40, 0.10, 0.36]), T([0.36, -0.18, 0.25]), T([0.22, -0.34, 0.15]), T([0.04, -0.38, 0.10]),
              self.pylorus]
        pts, rr, rw, _ = _curve(st, np.array([0.15, 0.19, 0.15, 0.10, 0.05]) * dist)
        rw = rw * 1.5
        q, near, bb = _tube(g, pts, rr, rw)
        forbid = None if kind == "bowel_contact" else peri
        whole = self.paint(q < 1, GWALL, allowed=(VFAT,), forbid=forbid, bb=bb)
        rn = np.where(near >= 0, rr[np.maximum(near, 0)], 1.0)
        wall = U(0.025, 0.035) * (1 + 0.8 * np.clip(self.tex_k()[bb], 0, 2))  # rugae
        inner = whole & (q < np.clip(1 - wall / rn, 0.05, 1) ** 2)
        self.tis[bb][inner] = GLUMEN
        content = rng.choice(["fluid", "food", "contrast" if self.oral_contrast else "fluid"], p=[0.5, 0.3, 0.2])
        lk = self.lumen_kind[bb]
        lk[inner] = {"fluid": 2, "food": 6, "contrast": 4}[content]
        if inner.any():
            vloc = g.v1[bb[1]][None, :, None]
            level = np.quantile(np.broadcast_to(vloc, inner.shape)[inner], U(0.1, 0.6))
            lk[inner & (vloc < level)] = 3

    # ---------------------------------------------------------------------------------------------- bowel
    def colon_and_small_bowel(self):
        g, U, rng, T, kind = self.g, self.U, self.rng, self.T, self.kind
        rc = U(0.09, 0.12)
        hf = T([-0.55, -0.12, U(0.02, 0.1)])
        sf = T([0.60, -0.05, U(0.18, 0.26)])
        asc = [T([-0.60, 0.12, -0.8]), T([-0.63, 0.10, -0.4]), T([-0.62, 0.02, -0.1]), hf]
        trans = [hf, T([-0.25, -0.45, U(-0.12, 0.0)]), T([0.2, -0.48, U(-0.1, 0.05)]), sf]
        desc = [sf, T([0.66, 0.12, 0.0]), T([0.67, 0.14, -0.4]), T([0.64, 0.12, -0.8])]
        for seg in (asc, trans, desc):
            content = rng.choice(["stool", "gas", "fluid"], p=[0.6, 0.3, 0.1])
            self.bowel(seg, rc, content, haustra=0.12, wall=0.015)
        # small-bowel loops, mostly below and in front of the organ; jejunum in the left upper quadrant
        n = int(rng.integers(14, 21))
        start = self.dj
        for k in range(n):
            if k < 2:
                p = start + [U(0.02, 0.12), U(-0.12, -0.02), U(-0.04, 0.04)]
            else:
                p = T([U(-0.55, 0.55), U(-0.45, 0.12), U(-0.48, -0.08) if k % 3 else U(-0.2, 0.12)])
            ctrl = [p]
            for _ in range(int(rng.integers(3, 6))):
                d = rng.normal(0, 1, 3)
                d[2] *= 0.6
                d /= np.linalg.norm(d) + 1e-9
                p = p + d * [0.18, 0.18, 0.18 / _LAM * 1.5]
                p[0] = np.clip(p[0], -0.6, 0.6)
                p[1] = np.clip(p[1], -0.5, 0.2)
                ctrl.append(p)
            probs = np.array([0.3 if self.oral_contrast else 0.0, 0.3, 0.12, 0.35])
            content = rng.choice(["contrast", "fluid", "gas", "collapsed"], p=probs / probs.sum())
            self.bowel(ctrl, U(0.05, 0.08), content)
        if kind == "bowel_contact":
            # a collapsed jejunal loop along the front and underside of body and tail, no fat plane
            rl = U(0.055, 0.075)
            ctrl = []
            for tt in np.linspace(0.32, 0.98, 7):
                p, r, rw, i = self._organ_point(tt)
                nrm = -self._posterior_normal(i)
                ctrl.append([p[0] + nrm[0] * (r + rl - 0.01), p[1] + nrm[1] * (r + rl - 0.01), p[2] - 0.4 * rw])
            self.bowel(ctrl, rl, "collapsed", allowed=(VFAT, BWALL, BLUMEN, GWALL), keep_out=None)

    def small_things(self):
        g, U, rng = self.g, self.U, self.rng
        peri = self.peri
        # mesenteric vessels: small, short, mostly vertical enhancing tubes in the fat
        for _ in range(int(rng.integers(14, 24))):
            c = self.T([U(-0.45, 0.45), U(-0.45, 0.15), U(-0.48, 0.15)])
            d = np.array([U(-0.06, 0.06), U(-0.06, 0.06), U(0.1, 0.3)])
            self.paint_tube([c - d / 2, c + d / 2], U(0.014, 0.024), VEIN, allowed=(VFAT,), forbid=peri)
        # lymph nodes
        for _ in range(int(rng.integers(2, 5))):
            c = self.T([U(-0.3, 0.35), U(-0.2, 0.2), U(-0.5, 0.1)])
            self.paint(_ellipsoid(g, c, (U(0.025, 0.045), U(0.02, 0.035), U(0.02, 0.04)), U(0, 3)) < 1, NODE,
                       allowed=(VFAT,), forbid=peri)
        # surgical clips next to the organ and in the gallbladder bed (streak case)
        self.clips = []
        if self.kind == "streak_lowdose":
            cands = [self.gb_c + [0.05, 0.06, 0.0]]
            for tt in (U(0.45, 0.6), U(0.75, 0.95)):
                p, r, rw, i = self._organ_point(tt)
                n = self._posterior_normal(i) * (1 if self.rng.random() < 0.5 else -1)
                cands.append(p + [n[0] * (r + 3 * g.px), n[1] * (r + 3 * g.px), U(-1, 1) * g.sl])
            for c in cands:
                m = _ellipsoid(g, c, (0.6 * g.px, 0.6 * g.px, 0.6 * g.sl)) < 1
                if not m.any():  # make sure at least one voxel
                    zi, yi, xi = g.zr(c[2], 0)[0], g.yr(c[1], 0)[0], g.xr(c[0], 0)[0]
                    m = np.zeros(g.shape, bool)
                    m[min(zi, g.shape[0] - 1), min(yi, g.shape[1] - 1), min(xi, g.shape[2] - 1)] = True
                m &= self.tis != ORGAN
                self.tis[m] = CLIP
                self.clips.append(c)

    # ---------------------------------------------------------------------------------------------- intensities
    def intensities(self):
        U, rng, g, kind = self.U, self.rng, self.g, self.kind
        portal = self.phase == "portal"
        mean = np.zeros(_N_TISSUES, np.float32)
        amp = np.zeros(_N_TISSUES, np.float32)
        fat = U(-115, -90)
        organ_hu = U(85, 110) if portal else U(100, 135)
        if kind == "fatty_atrophic":
            organ_hu = U(35, 60)
        vals = {
            AIR: (-1000, 4), FAT: (fat, 7), SKIN: (U(20, 50), 6), MUSCLE: (U(45, 62), 6), VFAT: (fat + U(0, 12), 9),
            CORT: (U(600, 900), 70), TRAB: (U(150, 260), 35), DISC: (U(70, 100), 6), CANAL: (U(10, 30), 4),
            LIVER: (U(95, 120) if portal else U(70, 90), 5), GB: (U(0, 20), 3),
            SPLEEN: (U(105, 125) if portal else U(110, 140), 4 if portal else 22),
            KCORT: (U(150, 190) if portal else U(190, 250), 7), KMED: (U(100, 130) if portal else U(60, 100), 7),
            AORTA: (U(140, 190) if portal else U(250, 350), 5), IVC: (U(110, 150) if portal else U(70, 110), 6),
            VEIN: (U(140, 185) if portal else U(110, 150), 5), GWALL: (U(80, 105), 8),
            BWALL: (U(85, 115) if portal else U(95, 125), 8), BLUMEN: (0, 0), GLUMEN: (0, 0), STOOL: (0, 0),
            LUNG: (U(-870, -820), 25), TABLE: (U(60, 150), 10), RIB: (U(300, 500), 50), CLIP: (3071, 0),
            NODE: (U(35, 60), 6), ORGAN: (organ_hu, U(5, 8)), CALC: (U(400, 800), 60),
        }
        vals[ARTERY] = vals[AORTA]
        for t, (m_, a_) in vals.items():
            mean[t], amp[t] = m_, a_
        tis = self.tis
        n1 = self.field((0.5, 0.8, 0.8))
        n2 = self.field((0.8, 1.8, 1.8))
        hu = mean[tis] + amp[tis] * (0.6 * n1 + 0.8 * n2)
        # bowel / stomach lumina by content; collapsed bowel (lumen_kind 1) takes a mucosal "feathery" pattern
        lk = self.lumen_kind
        lum = (tis == BLUMEN) | (tis == GLUMEN)
        collapsed_hu = (organ_hu + U(-5, 5)) if kind == "bowel_contact" else mean[BWALL] + U(-15, 5)
        by_kind = {1: (collapsed_hu, 12), 2: (U(0, 20), 4), 3: (U(-980, -900), 15), 4: (U(200, 400), 30),
                   5: (U(-10, 40), 25), 6: (U(25, 60), 18)}
        for code, (m_, a_) in by_kind.items():
            sel = lum & (lk == code)
            hu[sel] = m_ + a_ * n1[sel]
        if kind == "bowel_contact":
            sel = lum & (lk == 1)
            hu[sel] = organ_hu + U(-4, 4) + amp[ORGAN] * (0.6 * n1[sel] + 0.8 * n2[sel])
        stool = lum & ((lk == 5) | (lk == 6))
        bubbles = stool & (n1 > U(0.8, 1.3))
        hu[bubbles & (lk == 5)] = U(-900, -700)
        # fat: mesenteric strands
        fats = (tis == VFAT) | (tis == FAT)
        strand = np.exp(-(n2 / 0.12) ** 2) * (n1 > 0)
        hu[fats] += (U(25, 45) * strand)[fats]
        # liver: portal/hepatic vessel network (intersections of two zero-crossing surfaces)
        liv = tis == LIVER
        n3 = self.tex_k()
        vessels = liv & (np.abs(n2) < 0.25) & (np.abs(n3) < 0.35)
        hu[vessels] = mean[VEIN] - 10 + 6 * n1[vessels]
        # organ: lobular texture and fatty clefts
        org = tis == ORGAN
        thr, fmax = self.o_cleft
        fatf = np.clip((thr - self.n_lob) / 0.8, 0, 1) * fmax
        hu[org] = (hu * (1 - fatf) + (fat + 10) * fatf)[org]
        self.organ_clean_mean = float(hu[org].mean())
        self.hu_clean = hu.copy()
        # muscle fat striae
        mus = tis == MUSCLE
        hu[mus] -= (U(10, 25) * np.clip(n1 - 1.2, 0, None))[mus]
        return hu

    # ---------------------------------------------------------------------------------------------- image formation
    def image_formation(self, hu):
        U, rng, g, kind = self.U, self.rng, self.g, self.kind
        # partial volume: slice profile and in-plane point spread
        sxy, sz = U(0.4, 0.6), U(0.3, 0.5)
        hu = _blur1d(_blur1d(_blur1d(hu, sz, 0), sxy, 1), sxy, 2)
        # streaks: strong from clips (streak case), mild from dense contrast / bone in some normal cases
        sources = []
        if kind == "streak_lowdose":
            for c in self.clips:
                sources.append((c[0], c[1], c[2], U(0.08, 0.14), U(120, 250)))
        elif rng.random() < 0.35:
            dense = np.argwhere(((self.lumen_kind == 4) & (self.tis == BLUMEN)) | (self.tis == CORT))
            if len(dense):
                for _ in range(int(rng.integers(1, 3))):
                    z, y, x = dense[int(rng.integers(len(dense)))]
                    sources.append((g.u1[x], g.v1[y], g.w1[z], U(0.04, 0.1), U(20, 60)))
        streak = np.zeros(self.shape, np.float32)
        uu, vv = np.broadcast_arrays(g.u[0], g.v[0])
        for (su, sv, sw, swr, a) in sources:
            for z in range(self.shape[0]):
                dz = abs(g.w1[z] - sw) / swr
                if dz >= 1:
                    continue
                wgt = (1 - dz ** 2)
                du, dv = uu - su, vv - sv
                dist = np.sqrt(du ** 2 + dv ** 2)
                for k in range(int(rng.integers(4, 9))):
                    ang = U(0, np.pi)
                    dp = np.abs(du * math.sin(ang) - dv * math.cos(ang))
                    width = U(0.5, 1.2) * g.px
                    sign = 1 if k % 2 == 0 else -1
                    streak[z] += sign * a * U(0.4, 1.0) * wgt * np.exp(-0.5 * (dp / width) ** 2) / (1 + dist / 0.3)
                # dark band between the source and another source (beam hardening)
                for (tu, tv, tw, _, a2) in sources:
                    if (tu, tv) == (su, sv) or abs(tw - g.w1[z]) > swr:
                        continue
                    L = math.hypot(tu - su, tv - sv) + 1e-6
                    along = (du * (tu - su) + dv * (tv - sv)) / L
                    dp = np.abs(du * (tv - sv) - dv * (tu - su)) / L
                    band = (along > 0) & (along < L)
                    streak[z] -= 0.25 * min(a, a2) * wgt * band * np.exp(-0.5 * (dp / (2 * g.px)) ** 2)
        hu = hu + streak
        # noise: CT-like spectrum, stronger in the body centre
        noise = _ct_noise(rng, self.shape, fc=U(0.2, 0.32), z_corr=U(0.3, 0.6))
        centre = np.clip(1 - self.rho, 0, 1)
        sd_map = np.where(self.rho < 1, 0.85 + 0.45 * centre, 0.5).astype(np.float32)
        hu = hu + self.noise_sd * sd_map * noise
        self.info["streak_sources"] = len(sources)
        return hu

    def summary(self, image, label):
        Z = self.shape[0]
        zs = np.flatnonzero(label.reshape(Z, -1).any(1))
        if len(zs) == 0:
            raise RuntimeError(f"phantom_b: case {self.index} (seed {self.seed}) has no organ voxels; shape "
                               f"{self.shape} is too coarse")
        first, last = int(zs[0]), int(zs[-1])
        if len(zs) != last - first + 1:
            raise RuntimeError(f"phantom_b: case {self.index}: organ slices not contiguous")
        org = label.astype(bool)
        # organ voxels touching (6-neighbourhood) bowel or stomach tissue, and touching any non-organ tissue of
        # about the organ's HU (before blur and noise: no fat plane, same intensity)
        bowel = np.isin(self.tis, (BWALL, BLUMEN, GWALL, GLUMEN))
        similar = ~org & (np.abs(self.hu_clean - self.organ_clean_mean) < 20)
        touch = np.zeros_like(org)
        touch_sim = np.zeros_like(org)
        for ax in range(3):
            for sh in (1, -1):
                touch |= np.roll(bowel, sh, axis=ax)
                touch_sim |= np.roll(similar, sh, axis=ax)
        info = dict(kind=self.kind, hard=self.kind != "normal", phase=self.phase,
                    organ_voxels=int(org.sum()), organ_fraction=float(org.mean()),
                    first_slice=first, last_slice=last, positive_slices=last - first + 1,
                    organ_mean_hu=round(float(image[org].mean()), 1), noise_sd_hu=round(float(self.noise_sd), 1),
                    organ_voxels_touching_bowel=int((org & touch).sum()),
                    organ_voxels_touching_similar_hu=int((org & touch_sim).sum()))
        info.update(self.info)
        return info



# ================================================================================================ dataset writer
_FLAGS = {"dataset_id": "-d/--dataset-id", "num_cases": "--num-cases", "num_test": "--num-test", "seed": "--seed",
          "shape": "--shape", "spacing": "--spacing", "raw_folder": "--raw-folder", "name": "--name",
          "overwrite": "--overwrite"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _named(param: str) -> str:
    return f"{param} ({_FLAGS[param]})" if param in _FLAGS else param


def _check_name(name) -> str:
    if not isinstance(name, str) or not name:
        raise PhantomBInputError(f"{_named('name')} must be a non-empty string, got {name!r}")
    seps = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if any(s in name for s in seps) or ".." in name:
        raise PhantomBInputError(f"{_named('name')} must not contain path separators or '..', got {name!r}")
    if not _NAME_RE.match(name) or len(name) > 100:
        raise PhantomBInputError(f"{_named('name')} must be up to 100 letters, digits, '_', '-' or '.', starting "
                                 f"with a letter or digit, got {name!r}")
    return name


def _existing_datasets(raw: str, dataset_id: int):
    """Entries of the raw folder that nnU-Net would take for dataset ``dataset_id`` (its prefix rule)."""
    if not os.path.isdir(raw):
        return []
    prefix = f"Dataset{dataset_id:03d}"
    return sorted(e for e in os.listdir(raw) if e.startswith(prefix))


def _written_by_us(folder: str) -> bool:
    try:
        with open(os.path.join(folder, "phantom_cases.json")) as f:
            return json.load(f).get("generator") == "nnunetv2_ext.phantom_b"
    except (OSError, ValueError, AttributeError):
        return False


def _validate(dataset_id, num_cases, num_test, seed, shape, spacing, raw_folder, name, overwrite):
    def as_int(v, p, lo, hi=None):
        try:
            return _check_int(v, _named(p), lo, hi)
        except PhantomBInputError as e:
            raise PhantomBInputError(str(e)) from None

    dataset_id = as_int(dataset_id, "dataset_id", 1, 999)
    num_cases = as_int(num_cases, "num_cases", 2, 10000)
    num_test = as_int(num_test, "num_test", 0, 10000)
    seed = as_int(seed, "seed", 0, 2 ** 63 - 1)
    try:
        shape = _check_shape(shape)
    except PhantomBInputError as e:
        raise PhantomBInputError(str(e).replace("shape", _named("shape"), 1)) from None
    try:
        spacing = _check_spacing(spacing)
    except PhantomBInputError as e:
        raise PhantomBInputError(str(e).replace("spacing", _named("spacing"), 1)) from None
    name = _check_name(name)
    if not isinstance(overwrite, bool):
        raise PhantomBInputError(f"{_named('overwrite')} must be True or False, got {overwrite!r}")
    if raw_folder is None:
        raw_folder = os.environ.get("nnUNet_raw")
        if not raw_folder:
            raise PhantomBInputError(f"{_named('raw_folder')} is not given and the environment variable nnUNet_raw is "
                                     f"not set: pass raw_folder or set nnUNet_raw")
    if not isinstance(raw_folder, (str, os.PathLike)) or not str(raw_folder):
        raise PhantomBInputError(f"{_named('raw_folder')} must be a path, got {raw_folder!r}")
    raw = os.path.abspath(os.fspath(raw_folder))
    if os.path.exists(raw) and not os.path.isdir(raw):
        raise PhantomBInputError(f"{_named('raw_folder')} {raw} exists and is not a folder")
    folder_name = f"Dataset{dataset_id:03d}_{name}"
    existing = _existing_datasets(raw, dataset_id)
    others = [e for e in existing if e != folder_name]
    if others:
        raise FileExistsError(
            f"{_named('dataset_id')} {dataset_id} is already used in {raw} by {', '.join(others)}; choose another "
            f"dataset id ({_named('overwrite')} only ever replaces a dataset of the same name, {folder_name})")
    if existing:
        target = os.path.join(raw, folder_name)
        if not os.path.isdir(target) or os.path.islink(target):
            raise FileExistsError(f"{_named('dataset_id')} {dataset_id}: {target} exists and is not a dataset folder")
        if not overwrite:
            raise FileExistsError(f"{_named('dataset_id')} {dataset_id}: {target} already exists; pass "
                                  f"{_named('overwrite')} to replace it")
        if not _written_by_us(target):
            raise FileExistsError(f"{_named('dataset_id')} {dataset_id}: {target} exists and was not written by "
                                  f"phantom_b (no phantom_cases.json of ours); {_named('overwrite')} only replaces "
                                  f"a phantom_b dataset of the same name")
    return dataset_id, num_cases, num_test, seed, shape, spacing, raw, name, folder_name


def _write_nifti(array, spacing_zyx, path):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))  # SimpleITK: (x, y, z)
    img.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(img, path, True)


def write_dataset(dataset_id: int, num_cases: int, num_test: int, seed: int = 0,
                  shape: Sequence[int] = DEFAULT_SHAPE, spacing: Sequence[float] = DEFAULT_SPACING,
                  raw_folder: Optional[str] = None, name: str = "PhantomB", overwrite: bool = False) -> str:
    """Writes the nnU-Net v2 raw dataset ``Dataset{dataset_id:03d}_{name}`` (see the module docstring) and returns
    its path. ``num_cases`` training cases (indices 0..num_cases-1) and ``num_test`` held-out cases (the following
    indices). All arguments are checked before anything is written (:class:`PhantomBInputError` naming the
    parameter; :class:`FileExistsError` when the dataset id is taken). The dataset is written into a hidden
    temporary sibling folder and renamed into place at the end; ``overwrite=True`` replaces only a dataset of the
    same name."""
    (dataset_id, num_cases, num_test, seed, shape, spacing, raw, name,
     folder_name) = _validate(dataset_id, num_cases, num_test, seed, shape, spacing, raw_folder, name, overwrite)
    target = os.path.join(raw, folder_name)
    os.makedirs(raw, exist_ok=True)
    tmp = os.path.join(raw, f".tmp_{folder_name}_{os.getpid()}_{secrets.token_hex(4)}")
    os.mkdir(tmp)  # (not mkdtemp: the folder gets the usual permissions)
    old = None
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            os.makedirs(os.path.join(tmp, sub))
        cases = []
        for index in range(num_cases + num_test):
            split = "train" if index < num_cases else "test"
            image, label, info = generate_case(seed, index, shape)
            case = f"{name}_{index:03d}"
            suffix = "Tr" if split == "train" else "Ts"
            _write_nifti(image, spacing, os.path.join(tmp, f"images{suffix}", f"{case}_0000.nii.gz"))
            _write_nifti(label, spacing, os.path.join(tmp, f"labels{suffix}", f"{case}.nii.gz"))
            entry = dict(name=case, index=index, split=split, hard=info["hard"], kind=info["kind"],
                         organ_fraction=round(info["organ_fraction"], 6), organ_voxels=info["organ_voxels"],
                         first_slice=info["first_slice"], last_slice=info["last_slice"],
                         positive_slices=info["positive_slices"], organ_mean_hu=info["organ_mean_hu"],
                         noise_sd_hu=info["noise_sd_hu"], phase=info["phase"])
            cases.append(entry)
        dataset_json = {
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, "organ": 1},
            "numTraining": num_cases,
            "file_ending": ".nii.gz",
            "name": folder_name,
            "description": "Synthetic abdominal CT with one small pancreas-like organ (nnunetv2_ext.phantom_b); "
                           f"{num_test} held-out cases in imagesTs/labelsTs",
        }
        meta = {"generator": "nnunetv2_ext.phantom_b", "version": VERSION, "seed": seed, "shape": list(shape),
                "spacing": list(spacing), "hard_kinds": list(HARD_KINDS),
                "hard_rule": "case index i is hard when i % 4 == 3; kind = hard_kinds[(i // 4) % 4]",
                "num_training": num_cases, "num_test": num_test, "cases": cases}
        with open(os.path.join(tmp, "dataset.json"), "w") as f:
            json.dump(dataset_json, f, indent=2)
        with open(os.path.join(tmp, "phantom_cases.json"), "w") as f:
            json.dump(meta, f, indent=2)
        # swap into place; look again in case another dataset with this id appeared meanwhile
        others = [e for e in _existing_datasets(raw, dataset_id) if e != folder_name]
        if others:
            raise FileExistsError(f"{_named('dataset_id')} {dataset_id} was taken meanwhile in {raw} by "
                                  f"{', '.join(others)}")
        if os.path.lexists(target):
            if not overwrite:
                raise FileExistsError(f"{_named('dataset_id')} {dataset_id}: {target} appeared meanwhile")
            old = os.path.join(raw, f".old_{folder_name}_{os.getpid()}_{secrets.token_hex(4)}")
            os.rename(target, old)
        os.rename(tmp, target)
        tmp = None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.lexists(target):
            os.rename(old, target)  # put the old dataset back
            old = None
        raise
    finally:
        if old is not None and os.path.lexists(old):
            shutil.rmtree(old, ignore_errors=True)
    return target


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: writes a dataset; prints its path. Exit code 0, or 2 with a message on bad input."""
    parser = argparse.ArgumentParser(
        prog="python -m nnunetv2_ext.phantom_b",
        description="Writes an nnU-Net v2 raw dataset of synthetic abdominal CT with one small pancreas-like organ "
                    "(phantom B; see docs/phantom_b.md).")
    parser.add_argument("-d", "--dataset-id", type=int, required=True, help="dataset id, 1..999")
    parser.add_argument("--num-cases", type=int, default=20, help="training cases (>= 2, default 20)")
    parser.add_argument("--num-test", type=int, default=0, help="held-out cases in imagesTs/labelsTs (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--shape", type=int, nargs=3, default=list(DEFAULT_SHAPE), metavar=("Z", "Y", "X"),
                        help=f"volume shape (default {DEFAULT_SHAPE}, at least {MIN_SHAPE})")
    parser.add_argument("--spacing", type=float, nargs=3, default=list(DEFAULT_SPACING), metavar=("Z", "Y", "X"),
                        help=f"voxel spacing in mm (default {DEFAULT_SPACING})")
    parser.add_argument("--raw-folder", default=None, help="nnU-Net raw folder (default: $nnUNet_raw)")
    parser.add_argument("--name", default="PhantomB", help="dataset name (default PhantomB)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset of the same id AND name")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a malformed command line (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        path = write_dataset(args.dataset_id, args.num_cases, args.num_test, seed=args.seed, shape=args.shape,
                             spacing=args.spacing, raw_folder=args.raw_folder, name=args.name,
                             overwrite=args.overwrite)
    except (PhantomBInputError, FileExistsError) as e:
        print(f"phantom_b: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

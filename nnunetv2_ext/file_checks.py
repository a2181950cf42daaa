"""Refuse truncated image files instead of reading the missing part as zeros.

SimpleITK and nibabel read a NIfTI file whose end is missing (an interrupted download or copy) without an error: the
missing voxels come back as zeros, and a cut label or prediction silently changes every metric computed from it.
:func:`check_complete` detects it before the file is used:

- ``.nii.gz``: the whole gzip stream is inflated (zlib checks the trailer's CRC-32 and length); it must end where the
  file ends, and hold at least the data size the NIfTI header declares;
- ``.nii``: the file must hold ``vox_offset + prod(dim) * bitpix / 8`` bytes (NIfTI-1 or NIfTI-2 header).

Other formats are left to their readers. Used wherever the package reads or copies NIfTI files: the converters'
validation, the evaluation's reader (evaluate, compare, pseudo-labels) and the copying of unlabelled images.
"""
from __future__ import annotations

import os
import struct
import zlib
from typing import Optional

CHUNK = 1 << 20


class TruncatedFileError(ValueError):
    """A file that ends before its data does (the message names the file)."""


def _declared_size(header: bytes) -> Optional[int]:
    """vox_offset + data bytes from a NIfTI-1/2 header (either byte order); None when it is not one."""
    for endian in ("<", ">"):
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = struct.unpack(endian + "f", header[108:112])[0]
        elif len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            dims = struct.unpack(endian + "8q", header[16:80])
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            offset = struct.unpack(endian + "q", header[168:176])[0]
        else:
            continue
        n = 1
        for d in dims[1:1 + max(0, min(int(dims[0]), 7))]:
            n *= max(int(d), 1)
        return int(offset) + n * int(bitpix) // 8
    return None


def check_complete(path: str) -> None:
    """Raises :class:`TruncatedFileError` when a NIfTI file (``.nii`` or ``.nii.gz``) is cut short (module
    docstring); other files pass unchecked."""
    name = os.fspath(path)
    if name.endswith(".nii.gz"):
        inflate = zlib.decompressobj(wbits=31)
        size, header = 0, b""
        try:
            with open(name, "rb") as f:
                while True:
                    chunk = f.read(CHUNK)
                    if not chunk:
                        break
                    data = inflate.decompress(chunk)
                    if len(header) < 540:
                        header += data[:540 - len(header)]
                    size += len(data)
                    if inflate.eof:
                        if inflate.unused_data or f.read(1):  # a second gzip member or trailing bytes
                            raise TruncatedFileError(f"{name}: unexpected data after the end of the gzip stream")
                        break
        except zlib.error as e:
            raise TruncatedFileError(f"{name}: corrupt gzip data ({e}); the file is damaged or cut") from None
        if not inflate.eof:
            raise TruncatedFileError(f"{name}: the gzip stream ends early ({os.path.getsize(name)} bytes on disk): "
                                     f"the file was cut (interrupted download or copy?)")
    elif name.endswith(".nii"):
        with open(name, "rb") as f:
            header = f.read(540)
        size = os.path.getsize(name)
    else:
        return
    declared = _declared_size(header)
    if declared is not None and size < declared:
        raise TruncatedFileError(f"{name}: {size} bytes of NIfTI data where the header declares {declared}: the "
                                 f"file was cut")

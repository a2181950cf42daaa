"""Training of one propagation network (one label, binary) on an nnU-Net raw dataset: :func:`train_propagation`.

Clips of three slices (:class:`~nnunetv2_ext.propagation.data.ClipSampler`), the first slice's reference mask in
memory, the next two predicted in turn (STCN's training), loss OhemCE + Lovász on both predicted slices
(:class:`~nnunetv2_ext.propagation.losses.PropagationLoss`). Adam, learning rate decayed as nnU-Net's poly schedule
(``lr (1 - it / N)^0.9``). From scratch (no pretrained weights can be downloaded here; the paper starts from
STCN's weights). The model file holds the weights and what the application checks against the dataset: label name
and value, channels, normalisation.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from nnunetv2_ext.propagation.data import NORMALISATION, ClipSampler, label_value, read_labelled_volumes
from nnunetv2_ext.propagation.losses import PropagationLoss
from nnunetv2_ext.propagation.network import PropagationNet

MODEL_FORMAT = "nnunetv2_ext propagation model 1"


def default_patch(volumes, cap: int = 256) -> tuple:
    """The largest in-plane patch (multiple of 8, at most ``cap``) that fits every volume."""
    h = min(v[1].shape[2] for v in volumes)
    w = min(v[1].shape[3] for v in volumes)
    return tuple(max(8, min(cap, s) // 8 * 8) for s in (h, w))


def train_propagation(raw_dataset: str, label: str, output_file: str, iterations: int = 2000, batch: int = 4,
                      patch: Optional[Sequence[int]] = None, lr: float = 1e-3, width: int = 16, max_skip: int = 3,
                      seed: int = 1, device: str = "cpu", log: Callable[[str], None] = print) -> dict:
    """Trains and writes the model file (written to a temporary name, renamed at the end); returns its metadata."""
    for name, value, low in (("iterations", iterations, 1), ("batch", batch, 1), ("width", width, 1),
                             ("max_skip", max_skip, 1), ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    with open(os.path.join(raw_dataset, "dataset.json"), encoding="utf-8") as f:
        dataset_json = json.load(f)
    value = label_value(dataset_json, label)
    if isinstance(value, (list, tuple)):
        raise ValueError(f"label {label!r} is a region {value}: propagation models are trained per label value")
    volumes = read_labelled_volumes(raw_dataset, dataset_json, label)
    patch = tuple(patch) if patch else default_patch(volumes)
    sampler = ClipSampler(volumes, patch, max_skip=max_skip, seed=seed)
    torch.manual_seed(seed)
    dev = torch.device(device)
    channels = volumes[0][1].shape[0]
    net = PropagationNet(channels, width).to(dev)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = PropagationLoss()
    log(f"propagation training: label {label!r} (value {value}) of {os.path.basename(raw_dataset)}, "
        f"{len(sampler.volumes)} of {len(volumes)} cases show it; {iterations} iterations, batch {batch}, patch "
        f"{patch}, width {width}, max skip {max_skip}, seed {seed}, device {device}; from scratch")
    start, losses, report_every = time.time(), [], max(1, iterations // 10)
    net.train()
    for it in range(iterations):
        for group in optimizer.param_groups:
            group["lr"] = lr * (1 - it / iterations) ** 0.9
        frames, masks = (torch.from_numpy(a).to(dev) for a in sampler.batch(batch))
        logits = net(frames, masks[:, 0])
        loss = loss_fn(logits.flatten(0, 1), masks[:, 1:].flatten(0, 1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        optimizer.step()
        losses.append(float(loss.detach()))
        if (it + 1) % report_every == 0 or it + 1 == iterations:
            log(f"propagation training: iteration {it + 1}/{iterations}, loss {np.mean(losses[-report_every:]):.4f}"
                f" ({time.time() - start:.0f} s)")
    meta = {"format": MODEL_FORMAT, "label": label, "label_value": int(value), "num_channels": int(channels),
            "channel_names": dataset_json["channel_names"], "normalisation": NORMALISATION,
            "dataset": os.path.basename(os.path.normpath(raw_dataset)), "iterations": iterations, "batch": batch,
            "patch": list(patch), "lr": lr, "max_skip": max_skip, "seed": seed, "network": net.config(),
            "final_loss": float(np.mean(losses[-report_every:])), "seconds": round(time.time() - start, 1)}
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
    tmp = output_file + ".part"
    torch.save({"network_weights": net.state_dict(), "meta": meta}, tmp)
    os.replace(tmp, output_file)
    log(f"propagation model written to {output_file}")
    return meta


def load_propagation_model(path: str, device: torch.device = torch.device("cpu")):
    """(network in eval mode, metadata) of a model file of :func:`train_propagation`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"propagation model {path} does not exist")
    saved = torch.load(path, map_location=device, weights_only=False)
    if not isinstance(saved, dict) or saved.get("meta", {}).get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a propagation model of nnUNetv2_ext_train_propagation")
    meta = saved["meta"]
    net = PropagationNet(**meta["network"]).to(device)
    net.load_state_dict(saved["network_weights"])
    return net.eval(), meta

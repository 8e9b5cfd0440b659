"""Evaluation of a visual tokenizer on clips of the procedural world (:mod:`lumos.data.world`).

Encode -> decode through the discrete tokens, rounded to uint8 like any real use, then PSNR
(dB, on [0, 1]) and SSIM (Gaussian window 11, sigma 1.5) per clip, averaged; plus the
analyser's attribute accuracy on the reconstructions and on the originals.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lumos.data.world import ProceduralWorld
from lumos.errors import LumosError
from lumos.evaluation.analyser import aggregate, analyse, score
from lumos.tokenizers.visual import VisualTokenizer, frames_to_video, video_to_frames


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per sample of images in [0, 1], shape [N, ...] -> [N] (capped at 100 dB)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    g = torch.exp(
        -((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2) / (2 * sigma**2)
    )
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(
    x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 1.0
) -> torch.Tensor:
    """SSIM (Wang et al. 2004) per image of [N, C, H, W] in [0, data_range] -> [N].

    Gaussian-weighted local statistics over the valid region (no padding), K1 = 0.01,
    K2 = 0.03, averaged over pixels and channels, computed in float64. H and W must be
    >= ``window``.
    """
    if x.shape != y.shape or x.ndim != 4 or min(x.shape[-2:]) < window:
        raise LumosError(
            f"ssim needs two [N, C, H, W] tensors of equal shape with H, W >= {window}; "
            f"got {list(x.shape)} and {list(y.shape)}"
        )
    c = x.shape[1]
    w = _gaussian_window(window, sigma).to(x.device).expand(c, 1, window, window)
    x, y = x.double(), y.double()  # float32 cancellation in E[x^2] - E[x]^2 is ~1e-4 of SSIM

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, w, groups=c)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1).float()


def _attribute_mean(accuracy: dict[str, float]) -> float:
    return float(np.mean([v for k, v in accuracy.items() if k != "all"]))


def evaluate_tokenizer(
    tokenizer: VisualTokenizer,
    split: str = "heldout",
    n: int = 200,
    height: int = 64,
    width: int = 64,
    frames: int = 9,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> dict:
    """Reconstruction quality on ``n`` clips of the world split; returns a JSON-able dict.

    ``psnr`` / ``ssim``: means over clips (PSNR in dB on RGB in [0, 1], per clip over all
    frames; SSIM averaged over frames). ``analyser_accuracy``: mean over the analyser's
    attributes (count, colour, shape, size, motion, position, background) of the fraction
    of clips where it is read correctly off the reconstruction; ``analyser_all`` the
    fraction with every attribute right; ``analyser`` per attribute; ``shape_by_object`` the
    fraction of objects of each size and shape whose shape is read right (by colour match);
    ``*_original`` the same on the source clips (the analyser's own ceiling).
    """

    if n < 1:
        raise LumosError(f"--n must be >= 1, got {n}")
    tokenizer.latent_shape(frames, height, width)
    world = ProceduralWorld(split, height, width, frames, seed, 0.0)
    psnrs, ssims, scores_recon, scores_orig = [], [], [], []
    shape_hits: dict[str, list[bool]] = {}  # "small cross" -> shape read right, per object
    t0 = time.time()
    for lo in tqdm(range(0, n, batch_size), disable=not progress, desc="eval"):
        samples = [world[i] for i in range(lo, min(n, lo + batch_size))]
        original = np.stack([smp.frames for smp in samples])  # [B, T, H, W, 3] uint8
        recon = video_to_frames(tokenizer.decode(tokenizer.encode(frames_to_video(original))))
        x = torch.from_numpy(original).float().div(255).movedim(-1, 2)  # [B, T, 3, H, W]
        y = torch.from_numpy(recon).float().div(255).movedim(-1, 2)
        psnrs += psnr(x, y).tolist()
        b, t = x.shape[:2]
        ssims += ssim(x.flatten(0, 1), y.flatten(0, 1)).view(b, t).mean(1).tolist()
        for smp, rec in zip(samples, recon, strict=True):
            analysis = analyse(rec)
            scores_recon.append(score(analysis, smp.scene))
            for obj in smp.scene.objects:  # objects of a scene have distinct colours
                seen = [d.shape for d in analysis.objects if d.color == obj.color]
                shape_hits.setdefault(f"{obj.size} {obj.shape}", []).append(obj.shape in seen)
            scores_orig.append(score(analyse(smp.frames), smp.scene))
    recon_acc, orig_acc = aggregate(scores_recon), aggregate(scores_orig)
    return {
        "split": split,
        "clips": n,
        "frames": frames,
        "height": height,
        "width": width,
        "psnr": float(np.mean(psnrs)),
        "psnr_min": float(np.min(psnrs)),
        "ssim": float(np.mean(ssims)),
        "analyser_accuracy": _attribute_mean(recon_acc),
        "analyser_all": recon_acc["all"],
        "analyser": recon_acc,
        "shape_by_object": {k: float(np.mean(v)) for k, v in sorted(shape_hits.items())},
        "analyser_accuracy_original": _attribute_mean(orig_acc),
        "analyser_all_original": orig_acc["all"],
        "analyser_original": orig_acc,
        "codebook_size": tokenizer.codebook_size,
        "seconds": round(time.time() - t0, 1),
    }

"""Convert NVIDIA's released Cosmos-Tokenizer-DV4x8x8 (TorchScript ``encoder.jit`` and
``decoder.jit``) into a native tokenizer directory (``config.json`` + ``model.safetensors``).

This is the only place lumos loads the released TorchScript, and only on the user's explicit
opt-in (loading TorchScript runs code from the file). The network settings are read from the
weight shapes (the released config files are not used); the temporal (4) and spatial (8)
compression are those of DV4x8x8, which the weights cannot show. After the conversion, a
probe checks that the native network reproduces the TorchScript decoder and encoder.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from lumos.errors import LumosError
from lumos.tokenizers.cosmos import load_torchscript
from lumos.tokenizers.cosmos_native import CosmosConfig, CosmosVideoTokenizer, load_weights

# Prefixes of the released state dicts that hold weights (the rest are derived buffers:
# Haar filters, FSQ levels/basis and implicit codebook).
_ENCODER_PREFIXES = ("encoder.", "quant_conv.")
_DECODER_PREFIXES = ("decoder.", "post_quant_conv.")
_DERIVED = ("encoder.patcher3d.", "decoder.unpatcher3d.")


def _levels(encoder_state: dict, decoder_state: dict, where: Path) -> list[int]:
    found = [
        s[k].tolist()
        for s, k in (
            (encoder_state, "quantizer._levels"),
            (decoder_state, "inv_quant.quantizer._levels"),
        )
        if k in s
    ]
    if not found:
        raise LumosError(
            f"{where}: no FSQ levels (quantizer._levels) in encoder.jit or decoder.jit; is this "
            "a discrete Cosmos tokenizer (DV4x8x8)?"
        )
    if any(f != found[0] for f in found):
        raise LumosError(f"{where}: encoder.jit and decoder.jit disagree on the FSQ levels {found}")
    return [int(v) for v in found[0]]


def _indices(state: dict, prefix: str) -> list[int]:
    """Sorted integer indices i of keys ``prefix{i}.*``."""
    return sorted({int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)})


def infer_config(state: dict[str, torch.Tensor], levels: list[int], where: Path) -> CosmosConfig:
    """The network settings implied by the weight shapes of a released-layout state dict."""

    def shape(key: str) -> torch.Size:
        if key not in state:
            raise LumosError(
                f"{where}: weight {key} is missing; this is not Cosmos-Tokenizer-DV4x8x8's "
                "factorized network"
            )
        return state[key].shape

    channels, cin = shape("encoder.conv_in.0.conv3d.weight")[:2]
    patch = round((cin / 3) ** (1 / 3))
    if 3 * patch**3 != cin:
        raise LumosError(f"{where}: encoder input has {cin} channels, not 3 * patch_size^3")
    num_levels = len(_indices(state, "encoder.down."))
    widths = [
        shape(f"encoder.down.{i}.block.0.conv1.0.conv3d.weight")[0] for i in range(num_levels)
    ]
    if any(w % channels for w in widths):
        raise LumosError(f"{where}: level widths {widths} are not multiples of {channels}")
    attn_levels = [i for i in range(num_levels) if _indices(state, f"encoder.down.{i}.attn.")]
    embedding_dim = shape("quant_conv.conv3d.weight")[0]
    if embedding_dim != len(levels):
        raise LumosError(
            f"{where}: quant_conv gives {embedding_dim} channels but FSQ has {len(levels)} levels"
        )
    try:
        return CosmosConfig(
            channels=channels,
            channels_mult=[w // channels for w in widths],
            num_res_blocks=len(_indices(state, "encoder.down.0.block.")),
            attn_levels=attn_levels,
            z_channels=shape("post_quant_conv.conv3d.weight")[0],
            levels=levels,
            patch_size=patch,
            out_channels=shape("decoder.conv_out.1.conv3d.weight")[0] // patch**3,
        )
    except LumosError as err:
        raise LumosError(f"{where}: {err}") from None


def _check(native: CosmosVideoTokenizer, encoder, decoder, dtype: torch.dtype, where: Path) -> None:
    """Compare the native network with the TorchScript on a small random clip (CPU)."""
    gen = torch.Generator().manual_seed(0)
    indices = torch.randint(0, native.codebook_size, (1, 3, 4, 6), generator=gen)
    video = torch.rand(1, 3, 9, 32, 48, generator=gen) * 2 - 1
    native = native.to(dtype)
    try:  # one run: skip TorchScript's graph optimisation (seconds, no use here)
        with torch.jit.optimized_execution(False):
            ref_video = decoder(indices).float()
            ref_indices = encoder(video.to(dtype))[0].long()
    except Exception as err:  # TorchScript raises a variety of errors; report the first line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LumosError(
            f"cannot run the TorchScript in {where} on the CPU to check the conversion ({first}); "
            "pass --skip-check to convert without this check"
        ) from None
    ours = native.decode(indices)
    exact = dtype == torch.float32
    err = (ours - ref_video.clamp(-1, 1)).abs()
    if ours.shape != ref_video.shape or (err.max() if exact else err.mean()) > (
        1e-3 if exact else 5e-2
    ):
        raise LumosError(
            f"{where}: the converted decoder does not reproduce decoder.jit (shape "
            f"{list(ours.shape)} vs {list(ref_video.shape)}, max error {err.max():.3g}); this "
            "network differs from Cosmos-Tokenizer-DV4x8x8"
        )
    agree = (native.encode(video) == ref_indices).float().mean().item()
    if agree < (0.95 if exact else 0.5):
        raise LumosError(
            f"{where}: the converted encoder agrees with encoder.jit on only {agree:.1%} of "
            "codes; this network differs from Cosmos-Tokenizer-DV4x8x8"
        )


@contextmanager
def atomic_directory(out: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``out``; renamed to ``out`` when the block
    succeeds (files made readable as the umask allows), removed when it fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        for file in tmp.rglob("*"):
            if file.is_file():
                file.chmod(0o666 & ~umask)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def convert_cosmos(
    src: str | Path,
    out: str | Path,
    allow_torchscript: bool = False,
    dtype: torch.dtype | None = None,
    check: bool = True,
) -> CosmosVideoTokenizer:
    """Read ``src/encoder.jit`` and ``src/decoder.jit``, write a native tokenizer directory
    ``out`` (weights in ``dtype``, default: as released). ``out`` must not exist yet."""
    src, out = Path(src), Path(out)
    if not allow_torchscript:
        raise LumosError(
            f"converting {src} loads its TorchScript files, which runs code from them; if you "
            "trust their source, pass --trust-torchscript"
        )
    if not src.is_dir():
        raise LumosError(f"Cosmos tokenizer directory {src} does not exist")
    if out.exists():
        raise LumosError(f"output {out} already exists; choose a new directory")
    missing = [n for n in ("encoder.jit", "decoder.jit") if not (src / n).is_file()]
    if missing:
        raise LumosError(
            f"{src} lacks {' and '.join(missing)}; pass the directory of NVIDIA's "
            "Cosmos-Tokenizer-DV4x8x8 (encoder.jit, decoder.jit)"
        )
    encoder, decoder = load_torchscript(src / "encoder.jit"), load_torchscript(src / "decoder.jit")
    enc_state, dec_state = encoder.state_dict(), decoder.state_dict()
    state = {
        k: v
        for s, prefixes in ((enc_state, _ENCODER_PREFIXES), (dec_state, _DECODER_PREFIXES))
        for k, v in s.items()
        if k.startswith(prefixes) and not k.startswith(_DERIVED)
    }
    config = infer_config(state, _levels(enc_state, dec_state, src), src)
    native = CosmosVideoTokenizer(config)
    source_dtype = state["quant_conv.conv3d.weight"].dtype
    weights = {k: v.float() for k, v in state.items()}
    load_weights(native, weights, f"{src}: the weights do not fit the network their shapes imply")
    if check:
        _check(native, encoder, decoder, source_dtype, src)
    with atomic_directory(out) as tmp:
        native.save_pretrained(tmp, dtype=dtype or source_dtype)
    return native.float().eval()

"""Peak memory and compute of a generation call, estimated without allocating anything.

:func:`plan_generation` adds up, by arithmetic from the model's config, what a call of
``generation/generate.py`` keeps alive at its peak: the weights, the KV cache, the activations
of the largest forward (the prompt prefill or one frame step, every guidance branch), the
sampling temporaries (one chunk of fp32 logits over the codebook) and the visual tokenizer's
decode of the clip as the pipeline decodes it (run on the ``meta`` device by :func:`meta_peak_bytes`, which tracks
the bytes of live tensors op by op). FLOPs per latent frame count the matmuls of every step.

On CUDA, attention memory depends on the SDPA kernel: the mask-free calls of the generation loop
run the flash kernel (fp16/bf16) or the memory-efficient one (fp32), which keep no scores; a
masked call with grouped-query attention falls back to the math kernel, which materialises
fp32 scores [rows, heads, queries, keys]. The plan reports both, so the cost of a mask shows.

On the CPU, weights stored in the compute dtype stay memory-mapped and cost memory only where
they are read: every decoder layer, the visual rows of the embedding and of the head (the text
rows are read for the prompt tokens only).
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lumos.generation.generate import GenerationConfig, guidance_branches
from lumos.generation.scheduler import CDF_BLOCK, unmask_schedule
from lumos.model.config import LumosConfig
from lumos.sequence.layout import tokens_per_frame
from lumos.tokenizers.visual import clip_decode_chunk

GiB = 1024**3


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


@dataclass
class GenerationPlan:
    """Estimated peak memory (bytes) of one generation call, by part, and its compute."""

    weights: int
    kv_cache: int
    activations: int  # the largest forward: prefill or a frame step, all rows
    logits: int  # one chunk of sampling temporaries
    decode: int | None  # visual tokenizer decode of the clip (None: not estimated)
    flops_per_frame: float  # FLOPs of one latent frame (all steps, both branches, head)
    attention_kernel: str  # SDPA kernel the generation loop gets on this device
    masked_attention_scores: int  # what one masked (math-kernel) attention call would add
    notes: list[str] = field(default_factory=list)
    streamed: bool = False  # frames decoded while generating (pipe.stream, --stream)

    @property
    def total(self) -> int:
        """Peak. ``pipe()`` frees the cache before it decodes: the larger of generation and
        decode. Streaming decodes each latent frame while the cache lives: their sum."""
        gen = self.weights + self.kv_cache + self.activations + self.logits
        if self.streamed:
            return gen + (self.decode or 0)
        return max(gen, self.weights + (self.decode or 0))

    def table(self) -> str:
        rows = [
            ("weights", self.weights),
            ("KV cache", self.kv_cache),
            ("activations (largest forward)", self.activations),
            ("sampling (logits chunk)", self.logits),
            ("visual tokenizer decode", self.decode),
        ]
        lines = [f"{'part':<32}{'GiB':>10}"]
        for name, value in rows:
            shown = "n/a" if value is None else f"{value / GiB:.3f}"
            lines.append(f"{name:<32}{shown:>10}")
        lines.append(f"{'estimated peak':<32}{self.total / GiB:>10.3f}")
        lines.append(f"attention kernel: {self.attention_kernel}")
        lines.append(
            f"(a masked attention call would use the math kernel: "
            f"+{self.masked_attention_scores / GiB:.3f} GiB of scores per layer)"
        )
        lines.append(f"compute: {self.flops_per_frame / 1e12:.3f} TFLOP per latent frame")
        lines.extend(self.notes)
        return "\n".join(lines)


def plan_generation(
    config: LumosConfig,
    batch: int,
    num_frames: int,
    height: int,
    width: int,
    prompt_tokens: int,
    num_steps: int,
    branches: int,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    chunk_size: int = 256,
    fixed_shapes: bool = False,
    weights_mapped: bool = False,
    decode_bytes: int | None = None,
    extra_weights: int = 0,
    streamed: bool = False,
) -> GenerationPlan:
    """Plan a call generating ``num_frames`` latent frames of ``height`` x ``width`` latent tokens
    for ``batch`` prompts of at most ``prompt_tokens`` text ids. ``branches``: rows per prompt
    (1 without guidance, 2 with it, 3 with a negative prompt too). ``device``: ``"cpu"`` or
    ``"cuda"``. ``weights_mapped``: CPU weights memory-mapped from a checkpoint stored in
    ``dtype`` (only the pages read count; otherwise every weight does). ``extra_weights``: bytes
    of other resident weights (the visual tokenizer's). ``streamed``: see
    :attr:`GenerationPlan.streamed`."""
    c = config
    eb = dtype_bytes(dtype)
    d, I, L = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    H, KV, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    V = c.vocab.codebook_size
    rows = batch * branches
    Tf = tokens_per_frame(height, width)
    P = prompt_tokens + 5  # BOS, SEP and the video header around the text
    total = P + num_frames * Tf + 1
    N = height * width

    layer_params = 2 * d * H * hd + 2 * d * KV * hd + 3 * d * I + 2 * d + 4 * hd
    if device == "cpu" and weights_mapped:
        # Pages read: every layer, the visual rows of the head and of the embedding (sampled
        # codes are spread over the codebook, and the kernel maps neighbouring pages of a
        # faulted one), and the embedding rows of the prompt.
        weights = (L * layer_params + d + 2 * V * d + P * d) * eb
    else:
        weights = (L * layer_params + d + 2 * c.vocab_size * d) * eb
    weights += extra_weights
    kv_cache = 2 * L * rows * KV * total * hd * eb  # a slot per token, VEND included

    def forward_peak(tokens: int) -> int:
        """Live activations inside one layer: residual, norm, the MLP's gate/up/product and
        the rotary tables (several [rows, tokens, d] tensors in the attention block)."""
        mlp = tokens * (3 * I + 3 * d)
        attn = tokens * (8 * d + 2 * KV * hd + 4 * hd)
        return rows * max(mlp, attn) * eb + rows * tokens * 3 * 3 * hd * 4  # + fp32 positions

    frame_step = forward_peak(Tf) + rows * N * d * eb + batch * N * d * 4  # + gathered hidden
    activations = max(forward_peak(P), frame_step)
    logits = batch * min(chunk_size, N) * (V + CDF_BLOCK) * 4  # worked on in place
    if device == "cpu":
        # The allocator keeps a freed chunk for reuse instead of returning it: measured here,
        # one more chunk's worth stays resident (benchmarks/bench_planner.py).
        logits *= 2

    kernel = "cpu flash-style" if device == "cpu" else (
        "flash" if dtype in (torch.float16, torch.bfloat16) else "memory-efficient"
    )  # fmt: skip
    masked_scores = rows * H * Tf * (total - 1) * 4

    keep = unmask_schedule(N, num_steps)
    scored = [N] * num_steps if fixed_shapes else [N, *keep[:-1]]
    dense = 2 * L * (layer_params - 2 * d - 4 * hd)  # matmul FLOPs per token
    avg_keys = P + (num_frames + 1) / 2 * Tf
    attn_flops = 4 * L * H * hd * Tf * avg_keys  # per row and step: QK^T and PV
    per_step = rows * (Tf * dense + attn_flops)
    head = sum(batch * n * 2 * d * V for n in scored)
    flops = (num_steps + 1) * per_step + head  # +1: the history-masked commit
    notes = []
    if decode_bytes is None:
        notes.append("visual tokenizer decode not estimated")
    return GenerationPlan(
        weights=int(weights),
        kv_cache=int(kv_cache),
        activations=int(activations),
        logits=int(logits),
        decode=decode_bytes,
        flops_per_frame=float(flops),
        attention_kernel=kernel,
        masked_attention_scores=int(masked_scores),
        notes=notes,
        streamed=streamed,
    )


class _LiveBytes(TorchDispatchMode):
    """Peak of the bytes held by tensors created inside the mode (views and in-place results
    not counted twice), freed when the tensors are."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen: weakref.WeakSet = weakref.WeakSet()

    def _free(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or id(t) in inputs or t._base is not None:
                continue
            if t in self._seen:
                continue
            self._seen.add(t)
            n = t.numel() * t.element_size()
            self.live += n
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._free, n)
        return out


def meta_peak_bytes(module: torch.nn.Module, method: str, *args: torch.Tensor) -> int | None:
    """Peak bytes of live intermediate tensors while ``module.<method>(*args)`` runs, measured on
    the ``meta`` device (a copy of the module; nothing is allocated). None when the module
    cannot run there (e.g. it reads tensor values on the host)."""
    meta = copy.deepcopy(module).to("meta")
    meta_args = [a.to("meta") for a in args]
    mode = _LiveBytes()
    try:
        with torch.no_grad(), mode:
            getattr(meta, method)(*meta_args)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return None
    return mode.peak


def visual_decode_bytes(
    tokenizer: torch.nn.Module, batch: int, t: int, h: int, w: int, stream: bool = False
) -> int | None:
    """Peak memory of decoding a clip's latent codes [batch, t, h, w] as the pipeline does
    (``tokenizers.visual.decode_clip``): the whole clip, or for a tokenizer that decodes it a
    chunk at a time from a cached state, one chunk plus a latent frame (the first chunk's
    extra frame; the cached state is a few frames, and bounds a stream's calls too).
    ``stream``: frames decoded as they are made; a tokenizer without a cached state re-decodes
    its ``decode_context`` frames with each new one (the whole prefix when unbounded)."""
    chunk = clip_decode_chunk(tokenizer)
    ctx = tokenizer.decode_context
    if chunk is not None:
        t = min(t, chunk + 1)
    elif stream and ctx is not None:
        t = min(t, ctx + 1)
    codes = torch.zeros(batch, t, h, w, dtype=torch.long)
    return meta_peak_bytes(tokenizer, "_decode", codes)  # _decode: no host-side range check


def plan_request(
    config: LumosConfig,
    visual_tokenizer: torch.nn.Module,
    batch: int,
    num_frames: int,
    height: int,
    width: int,
    prompt_tokens: int,
    num_steps: int,
    guidance_scale: float,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    compile: bool = False,
    window: int | None = None,
    negative: bool = False,
    stream: bool = False,
) -> GenerationPlan:
    """:func:`plan_generation` for a request in pixels and RGB frames (``num_frames``,
    ``height``, ``width``), the visual tokenizer's decode of the clip included. ``window``
    (RGB frames): the model's context when the clip is longer (``generation/long_video.py``);
    the cache and the forwards are those of the window; the decode is chunked where the tokenizer
    allows it (``visual_decode_bytes``). ``negative``: a negative prompt's guidance branch runs
    too. ``stream``: frames are decoded as they are made (``GenerationPlan.streamed``)."""
    t, h, w = visual_tokenizer.latent_shape(num_frames, height, width)
    seen = t if window is None else min(t, visual_tokenizer.latent_shape(window, height, width)[0])
    branches = guidance_branches(GenerationConfig(guidance_scale=guidance_scale), negative)
    return plan_generation(
        config, batch, seen, h, w, prompt_tokens, num_steps, len(branches), dtype,
        device.split(":")[0], fixed_shapes=compile,
        decode_bytes=visual_decode_bytes(visual_tokenizer, batch, t, h, w, stream),
        extra_weights=sum(p.numel() * p.element_size() for p in visual_tokenizer.parameters()),
        streamed=stream,
    )  # fmt: skip

"""Host memory per process when 2-process FSDP2 training starts from a checkpoint (issue 19):
this tree's load order (meta build, shard, each process reads its rows) against an older
revision's (each process loads the whole model in fp32, then shards it).

A random bf16 checkpoint of the ``lumos_1b`` width with ``--layers`` layers (4: about 0.77 B
parameters, 1.5 GB) is written in the official layout: a Chameleon ``config.json``, two
safetensors shards with an index, and a bundled tokenizer key that loading skips. Then
``torchrun --nproc-per-node 2`` (gloo, CPU, one thread per process) builds the trainer, as
``lumos train --set model.init_from=CKPT parallel=fsdp precision=fp32`` does, once with this
tree's ``src`` and once with ``--compare-rev``'s (``git archive`` into a temporary directory,
put first on ``PYTHONPATH``), ``--repeats`` times each, alternating.

Measured per process while the trainer is built: the peak unique set size (USS:
``Private_Clean + Private_Dirty`` of ``/proc/self/smaps_rollup``, the memory only this process
maps, so page-cache pages shared with other processes are not counted; sampled every 5 ms by a
thread), and ``VmHWM`` (peak RSS) for reference. Both include the interpreter with torch
imported (its USS is shown as "base"). A checksum of each process's parameter shards shows
that both load the same weights. Ratios are against the older revision in the same run.

    python benchmarks/bench_fsdp_loading.py [--compare-rev 3c4d826] [--layers 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GiB = 1024**3


def uss() -> int:
    """Unique set size of this process in bytes (Private_Clean + Private_Dirty)."""
    total = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1]) * 1024
    return total


def vm_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not in /proc/self/status")


def worker(out: str, ckpt: str, run_dir: str) -> None:
    """One torchrun process: build the trainer from ``ckpt``, report memory as JSON lines."""
    import torch

    from lumos.training.config import load_config
    from lumos.training.train import Trainer

    peak, stop = [uss()], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], uss())
            time.sleep(0.005)

    base = uss()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    overrides = [
        f"model.init_from={ckpt}",
        "parallel=fsdp",
        "precision=fp32",
        "data.image_ratio=1",
        "data.image_size=[32, 32]",
        "data.text_tokens=[4, 4]",
        "steps=1",
        "validate_every=0",
        "tensorboard=false",
        "threads=1",
        f"output_dir={run_dir}",
    ]
    trainer = Trainer(load_config(overrides=overrides), resume=False)
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    peak[0], peak_rss = max(peak[0], uss()), vm_hwm()
    with torch.no_grad():
        local = [p.to_local() if hasattr(p, "to_local") else p for p in trainer.module.parameters()]
        checksum = sum(float(t.sum()) for t in local)
        shard_bytes = sum(t.numel() * t.element_size() for t in local)
    row = {
        "rank": trainer.ctx.rank,
        "base": base,
        "peak_uss": peak[0],
        "peak_rss": peak_rss,
        "seconds": seconds,
        "checksum": checksum,
        "shard_bytes": shard_bytes,
    }
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    trainer.ctx.barrier()
    del trainer
    from lumos.training.distributed import shutdown_distributed

    shutdown_distributed()


def write_checkpoint(path: Path, layers: int) -> int:
    """The random bf16 official-layout checkpoint; returns its parameter count."""
    import torch
    from safetensors.torch import save_file

    from lumos.model.config import LumosConfig
    from lumos.model.transformer import LumosModel

    geometry = LumosConfig.lumos_1b(num_hidden_layers=layers)
    config = {
        "architectures": ["ChameleonMMRoPEForConditionalGeneration"],
        "model_type": "chameleon",
        "vocab_size": geometry.vocab_size,
        "hidden_size": geometry.hidden_size,
        "intermediate_size": geometry.intermediate_size,
        "num_hidden_layers": layers,
        "num_attention_heads": geometry.num_attention_heads,
        "num_key_value_heads": geometry.num_key_value_heads,
        "rope_theta": geometry.rope_theta,
        "rms_norm_eps": geometry.rms_norm_eps,
        "max_position_embeddings": 4096,
        "mm_rope": True,
        "torch_dtype": "bfloat16",
    }
    with torch.device("meta"):
        shapes = {
            k: v.shape
            for k, v in LumosModel(LumosConfig.from_official(config)).state_dict().items()
        }
    names = list(shapes)
    split = names.index(f"model.layers.{layers // 2}.input_layernorm.weight")
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    gen = torch.Generator().manual_seed(0)
    weight_map = {}
    for i, part in enumerate((names[:split], names[split:])):
        file = f"model-{i + 1:05d}-of-00002.safetensors"
        state = {k: (torch.randn(shapes[k], generator=gen) * 0.02).bfloat16() for k in part}
        if i == 1:
            state["model.vqmodel.quant_conv.weight"] = torch.zeros(4, 4, dtype=torch.bfloat16)
        save_file(state, path / file, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(state, file)
        del state
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return sum(s.numel() for s in shapes.values())


def run_variant(src: Path, ckpt: Path, tmp: Path, name: str) -> list[dict]:
    out = tmp / f"{name}.jsonl"
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [__file__, "--worker", str(out), str(ckpt), str(tmp / f"run-{name}")]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return sorted(
        (json.loads(line) for line in out.read_text().splitlines()), key=lambda r: r["rank"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare-rev", default="3c4d826", help="git revision of the old path")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        old_src = tmp / "old"
        old_src.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.compare_rev, "src"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old_src)], input=archive, check=True)
        numel = write_checkpoint(tmp / "ckpt", args.layers)
        print(
            f"checkpoint: lumos_1b width, {args.layers} layers, {numel / 1e9:.2f} B parameters, "
            f"bf16 official layout ({numel * 2 / GiB:.2f} GiB); 2 processes, FSDP2 on gloo"
        )
        variants = {f"old ({args.compare_rev})": old_src / "src", "new (this tree)": ROOT / "src"}
        results: dict[str, list[list[dict]]] = {name: [] for name in variants}
        for r in range(args.repeats):
            for name, src in variants.items():
                results[name].append(run_variant(src, tmp / "ckpt", tmp, f"{r}-{name.split()[0]}"))
        old_name = next(iter(variants))
        print(
            f"{'variant':<18}{'run':>4}{'rank':>5}{'base USS':>10}{'peak USS':>10}"
            f"{'peak RSS':>10}{'shards':>8}{'s':>6}{'USS ratio':>11}  checksum"
        )
        for name, runs in results.items():
            for r, rows in enumerate(runs):
                for row in rows:
                    ref = results[old_name][r][row["rank"]]["peak_uss"]
                    print(
                        f"{name:<18}{r:>4}{row['rank']:>5}{row['base'] / GiB:>10.2f}"
                        f"{row['peak_uss'] / GiB:>10.2f}{row['peak_rss'] / GiB:>10.2f}"
                        f"{row['shard_bytes'] / GiB:>8.2f}{row['seconds']:>6.1f}"
                        f"{row['peak_uss'] / ref:>11.2f}  {row['checksum']:.6e}"
                    )
        worst = max(
            new["peak_uss"] / old["peak_uss"]
            for new_runs, old_runs in zip(
                results["new (this tree)"], results[old_name], strict=True
            )
            for new, old in zip(new_runs, old_runs, strict=True)
        )
        print(f"memory in GiB; worst new/old peak-USS ratio over ranks and runs: {worst:.2f}")


if __name__ == "__main__":
    main()

"""Host memory while loading a checkpoint onto its target dtype (issue 13, placement).

A random bf16 checkpoint of the ``lumos_1b`` width with 2 layers (about 0.65 B parameters, 1.3 GB)
is written once; fresh processes then load it with ``LumosModel.from_pretrained`` as bf16 and as
fp32, and as a whole pipeline-style call would (``device="cpu"``). Reported: the peak RSS growth
during the load (``VmHWM`` after a reset, minus the RSS before) against the size of the weights
in the target dtype. Target: at most 1.3x.

    python benchmarks/bench_loading.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

import torch

from rss import reset_peak, status_bytes

GiB = 1024**3


def load_case(path: str, dtype: str) -> dict:
    from lumos import LumosModel

    target = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    before = reset_peak()
    model = LumosModel.from_pretrained(path, dtype=target)
    for p in model.parameters():  # touch every weight, as generating would
        p.data.view(-1)[:: max(1, p.numel() // 1024)].sum()
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"peak": status_bytes("VmHWM") - before, "size": size}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--case":
        print(json.dumps(load_case(sys.argv[2], sys.argv[3])))
        return
    from lumos import LumosConfig, LumosModel

    with tempfile.TemporaryDirectory() as tmp:
        with torch.device("meta"):
            model = LumosModel(LumosConfig.lumos_1b(num_hidden_layers=2))
        model = model.to_empty(device="cpu").to(torch.bfloat16)
        for p in model.parameters():
            p.data.normal_(0, 0.02)
        model.save_pretrained(tmp)
        del model
        print(f"{'load as':<10}{'weights GiB':>13}{'peak growth GiB':>17}{'ratio':>8}")
        for dtype in ("bf16", "fp32"):
            out = subprocess.check_output([sys.executable, __file__, "--case", tmp, dtype])
            r = json.loads(out.decode().strip().splitlines()[-1])
            print(
                f"{dtype:<10}{r['size'] / GiB:>13.2f}{r['peak'] / GiB:>17.2f}"
                f"{r['peak'] / r['size']:>8.2f}"
            )


if __name__ == "__main__":
    main()

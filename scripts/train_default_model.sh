#!/usr/bin/env bash
# Reproduces the model shipped in src/lumos/assets/default/ from scratch on a CPU, offline:
# text tokenizer -> visual tokenizer -> token shards of the procedural world -> transformer ->
# pipeline directory -> evaluation. Each step is resumable: rerun the script after an interruption.
# Override the transformer's final length with STEPS=..., the data size with CLIPS=....
# The shipped transformer was trained in four phases: 1,500 steps (cosine to 5 %), then resumed
# with the schedule stretched to 5,500, 9,500 and 11,000 steps (each resume restarts the
# cosine where the longer schedule would be: 1.7e-3 at step 1,500, 8.1e-4 at 5,500, 1.8e-4 at 9,500).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=src/lumos/assets/default
CLIPS=${CLIPS:-12000}
STEPS=${STEPS:-11000}

# 1. Byte-level BPE on world captions wrapped in the prompt template.
[ -f "$OUT/text_tokenizer/tokenizer.json" ] ||
  lumos train-text-tokenizer --world 2000 --out "$OUT/text_tokenizer"

# 2. Causal FSQ video tokenizer (64 x 64 px, 9 frames -> 3 x 8 x 8 codes); see its README.md.
if [ ! -f "$OUT/visual_tokenizer/model.safetensors" ]; then
  lumos train-tokenizer --out runs/visual_tokenizer --resume
  mkdir -p "$OUT/visual_tokenizer"
  cp runs/visual_tokenizer/config.json runs/visual_tokenizer/model.safetensors "$OUT/visual_tokenizer/"
fi

# 3. Token shards: training clips (30 % images) and held-out validation clips.
TOK=(--visual-tokenizer "$OUT/visual_tokenizer" --text-tokenizer "$OUT/text_tokenizer"
     --height 64 --width 64 --frames 9 --image-fraction 0.3 --workers 2)
lumos tokenize --world train --count "$CLIPS" --seed 0 --out data/world-train "${TOK[@]}"
lumos tokenize --world heldout --count 400 --seed 1 --out data/world-val "${TOK[@]}"

# 4. The transformer: AR-DF (tube masks, text drop 0.1), joint image/video.
for steps in 1500 5500 9500 "$STEPS"; do
  torchrun --nproc-per-node 2 -m lumos.cli.main train --config configs/default-model.yaml --steps "$steps"
done

# 5. Assemble the pipeline directory and evaluate it.
python -c "import torch; from lumos import LumosModel
LumosModel.from_pretrained('runs/default-model/model').save_pretrained(
    '$OUT/transformer', dtype=torch.float16)"  # half-size storage; runs in float32
cat > "$OUT/pipeline.json" <<JSON
{"fps": 4, "height": 64, "width": 64, "num_frames": 9, "num_inference_steps": 16,
 "guidance_scale": 3.0, "history_mask_ratio": 0.7, "num_threads": 1}
JSON
lumos eval --n 100 --out eval/default

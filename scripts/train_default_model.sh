#!/usr/bin/env bash
# Reproduces the model shipped in src/lumos/assets/default/ from scratch on a CPU, offline:
# text tokenizer -> visual tokenizer -> token shards of the procedural world -> transformer ->
# pipeline directory -> evaluation. Each step is resumable: rerun the script after an interruption
# (a finished phase is a no-op).
#
# This is the recipe as it was run, in the order it was run: the visual tokenizer and the
# transformer were first trained against each other at 6,500 tokenizer steps; the tokenizer was
# then trained on to 22,000 steps, which moves its codes, so the transformer was fine-tuned on
# re-tokenised data, and last on 60,000 fresh clips. Within a run, each phase resumes the
# previous one with the cosine schedule stretched, so the learning rate restarts where the
# longer schedule would be; the three fine-tuning runs start from the previous weights with a
# schedule of their own (configs/default-model-v2.yaml, -v3.yaml, -v4.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=src/lumos/assets/default
VT=runs/visual_tokenizer

# 1. Byte-level BPE on world captions wrapped in the prompt template.
[ -f "$OUT/text_tokenizer/tokenizer.json" ] ||
  lumos train-text-tokenizer --world 2000 --out "$OUT/text_tokenizer"

# 2. Causal FSQ video tokenizer (64 x 64 px, 9 frames -> 3 x 8 x 8 codes); see its README.md.
#    --stop-after is an absolute step; the last phase ran with 2 threads (nothing else running).
vt() { lumos train-tokenizer --out "$VT" --color-augment-from 3000 "$@"; }
[ -d "$VT/checkpoint" ] || vt --steps 3600 --batch-size 4 --lr 2e-3 --levels 7,5,5,5,5 \
  --checkpoint-every 100 --log-every 10 --threads 1 --stop-after 1600
vt --resume --steps 5000 --threads 1 --stop-after 2800
vt --resume --steps 6500 --threads 1
fp16() {  # store a tokenizer's weights as float16, as shipped (it runs in float32)
  python -c "import sys, torch; from lumos.tokenizers.causal_video import CausalVideoTokenizer
CausalVideoTokenizer.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2], dtype=torch.float16)" "$@"
}
[ -d "$VT-6500" ] || fp16 "$VT" "$VT-6500"  # the tokenizer of the first transformer phases
for steps in 9000 12000; do vt --resume --steps "$steps" --threads 1; done
vt --resume --steps 22000 --threads 2

# 3. Token shards for the first transformer phases (codes of the 6,500-step tokenizer):
#    12,000 training clips (30 % images) and 400 held-out validation clips.
tok() { lumos tokenize --text-tokenizer "$OUT/text_tokenizer" --height 64 --width 64 --frames 9 \
  --image-fraction 0.3 --workers 2 "$@"; }
tok --visual-tokenizer "$VT-6500" --world train --count 12000 --seed 0 --out data/world-train
tok --visual-tokenizer "$VT-6500" --world heldout --count 400 --seed 1 --out data/world-val

# 4. The transformer: AR-DF (tube masks, text drop 0.1), joint image/video, 11,000 steps in
#    four phases (lr restarts at 1.7e-3 at step 1,500, 8.1e-4 at 5,500, 1.8e-4 at 9,500).
for steps in 1500 5500 9500 11000; do
  torchrun --nproc-per-node 2 -m lumos.cli.main train --config configs/default-model.yaml --steps "$steps"
done

# 5. The shipped tokenizer (22,000 steps, stored as float16), its shards (24,000 training clips),
#    and 4,500 steps of fine-tuning the transformer on its codes.
fp16 "$VT" "$OUT/visual_tokenizer"
tok --visual-tokenizer "$OUT/visual_tokenizer" --world train --count 24000 --seed 0 --out data/world-train-v2
tok --visual-tokenizer "$OUT/visual_tokenizer" --world heldout --count 400 --seed 1 --out data/world-val-v2
torchrun --nproc-per-node 2 -m lumos.cli.main train --config configs/default-model-v2.yaml

# 6. 5,000 more steps on 60,000 fresh train-split clips next to those 24,000 (the phases before
#    saw each of their clips many times over).
tok --visual-tokenizer "$OUT/visual_tokenizer" --world train --count 60000 --seed 2 --out data/world-train-v3
torchrun --nproc-per-node 2 -m lumos.cli.main train --config configs/default-model-v3.yaml

# 7. Assemble the pipeline directory and evaluate it.
python -c "import torch; from lumos import LumosModel
LumosModel.from_pretrained('runs/default-model-v3/model').save_pretrained(
    '$OUT/transformer', dtype=torch.float16)"  # half-size storage; runs in float32
cat > "$OUT/pipeline.json" <<JSON
{"fps": 4, "height": 64, "width": 64, "num_frames": 9, "num_inference_steps": 16,
 "guidance_scale": 3.0, "history_mask_ratio": 0.7, "num_threads": 1,
 "prompt_domain": "procedural-world"}
JSON
lumos eval --n 100 --out eval/default-v6

# 8. The seventh version: 1,000 steps with history noise (configs/default-model-v4.yaml) from
#    the sixth version as stored above, on 12,000 train-split clips.
tok --visual-tokenizer "$OUT/visual_tokenizer" --world train --count 12000 --seed 0 --out data/world-train-v4
torchrun --nproc-per-node 2 -m lumos.cli.main train --config configs/default-model-v4.yaml
python -c "import torch; from lumos import LumosModel
LumosModel.from_pretrained('runs/default-model-v4/model').save_pretrained(
    '$OUT/transformer', dtype=torch.float16)"
lumos eval --n 100 --out eval/default-v7

# 9. The eighth version: the tokenizer's decoder fine-tuned alone on 9- and 25-frame clips (the
#    world's slow motion, which it had not seen), 4,000 steps; the encoder, and so every code
#    and the seventh transformer trained on them, stay as they are (docs/design.md, "Long videos").
VD=runs/visual_tokenizer-decoder
[ -d "$VD/checkpoint" ] || lumos train-tokenizer --out "$VD" --init-from "$OUT/visual_tokenizer" \
  --decoder-only --frames 9,25 --steps 4000 --lr 5e-4 --warmup-steps 50 --batch-size 4 \
  --color-augment-from 0 --seed 5 --checkpoint-every 500 --log-every 50 --threads 2
cp "$VD/config.json" "$VD/model.safetensors" "$OUT/visual_tokenizer/"
lumos eval --n 100 --out eval/default

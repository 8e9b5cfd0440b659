"""Long videos from a pipeline (default: the shipped model), judged where the procedural world
defines the answer (issue 14): persistence, motion through prompt schedules, and continuation.

* ``persistence``: held-in text-to-video prompts whose object stands still, 33-frame clips cut
  into the four 9-frame windows that share their boundary frames (0-8, 8-16, 16-24, 24-32), each
  judged by the analyser: colour, shape and object count per window. The sliding window
  (default) and the naive whole-clip context (``window`` = the clip) run side by side.
* ``schedule``: 4 segments (RGB frames 0-8, 9-16, 17-24, 25-32: latent frames 0, 3, 5, 7 on) with
  alternating directions (right/left/right/left or up/down/up/down), one held-in object; each
  segment's 9 frames (0-8, 8-16, ...) must show its direction, colour and shape.
* ``continuation``: the first 9 frames of a held-out scene's 25-frame world clip continued by
  16 frames; the new frames must keep the object's colour and shape (and, reported beside, its
  motion). Beside it, the same scene's 9-frame clip continued (moving objects then leave the
  canvas at the clip's pace).

    python scripts/long_video_eval.py [--n 100] [--baseline-n N] [--threads 2]
        [--parts persistence schedule continuation] [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from lumos.data.world import caption, parse_caption, render, sample_scene
from lumos.evaluation.analyser import analyse, score
from lumos.generation.pipeline import LumosPipeline
from lumos.tokenizers.visual import frames_to_video

WINDOWS = [(0, 9), (8, 17), (16, 25), (24, 33)]
BASE = 7_000_000  # world seeds of these cases: apart from lumos eval's


def persistence(pipe, n: int, window: int | None) -> dict:
    counts = {"color_last": 0, "shape_last": 0, "count_windows": 0, "windows": 0}
    for i in range(n):
        scene = sample_scene(BASE + i, "train", num_objects=1, still_only=True)
        prompt = caption(scene, BASE + i)
        frames = pipe(prompt, num_frames=33, window=window,
                      generator=torch.Generator().manual_seed(BASE + i)).frames[0]  # fmt: skip
        want = parse_caption(prompt)
        for k, (a, b) in enumerate(WINDOWS):
            s = score(analyse(frames[a:b]), want)
            counts["count_windows"] += s["count"]
            counts["windows"] += 1
            if k == len(WINDOWS) - 1:
                counts["color_last"] += s["color"]
                counts["shape_last"] += s["shape"]
    return {
        "color_last_window": counts["color_last"] / n,
        "shape_last_window": counts["shape_last"] / n,
        "count_right_windows": counts["count_windows"] / counts["windows"],
    }


def schedule(pipe, n: int) -> dict:
    ok = seg_ok = 0
    for i in range(n):
        scene = sample_scene(BASE + 10_000 + i, "train", num_objects=1)
        axis = ("right", "left") if i % 2 == 0 else ("up", "down")
        obj = scene.objects[0]
        # start where alternating moves stay on the canvas
        x, y = (0.35, 0.5) if axis[0] == "right" else (0.5, 0.35)
        prompts = []
        for k in range(4):
            moved = dataclasses.replace(obj, motion=axis[k % 2], x=x, y=y)
            prompts.append(caption(dataclasses.replace(scene, objects=(moved,)), BASE + i))
        frames = pipe(prompts, num_frames=33, segment_frames=8,
                      generator=torch.Generator().manual_seed(BASE + 10_000 + i)).frames[0]  # fmt: skip
        good = 0
        for k, (a, b) in enumerate(WINDOWS):
            s = score(analyse(frames[a:b]), parse_caption(prompts[k]))
            good += s["motion"] and s["color"] and s["shape"]
        seg_ok += good
        ok += good == 4
    return {"clips_all_segments_right": ok / n, "segments_right": seg_ok / (4 * n)}


def continuation(pipe, n: int) -> dict:
    """Each case is a held-out scene rendered as a 25-frame world clip; its first 9 frames are
    given and the model adds 16. The world keeps every object inside the canvas over its whole
    clip, so the 16 new frames have a defined answer (colour and shape). The second figure
    continues the scene's 9-frame clip instead: a moving object has then travelled its whole
    path, and continued at that pace it leaves the canvas, where the world defines nothing
    (an object that leaves counts as a failure there). The world clip's new frames must also
    keep its direction of motion (or stillness): reported beside, as ``motion (world_clip)``.
    ``tokenizer ceiling``: the whole world clip encoded and decoded, its frames 9-24 judged the
    same way: what a transformer that generated the true codes would score."""
    kept = {"world_clip": 0, "trained_pace_clip": 0}
    moved = ceiling = 0
    for i in range(n):
        seed = BASE + 20_000 + i
        scene = sample_scene(seed, "heldout", num_objects=1)
        prompt = caption(scene, seed)
        want = parse_caption(prompt)
        world = render(scene, 64, 64, 25)
        codes = pipe.visual_tokenizer.encode(frames_to_video(torch.as_tensor(world)[None]))
        s = score(analyse(pipe.decode(codes)[0][9:]), want)
        ceiling += s["color"] and s["shape"]
        for name, clip in (
            ("world_clip", world[:9]),
            ("trained_pace_clip", render(scene, 64, 64, 9)),
        ):
            start = pipe.continuation_start(len(clip))  # the clip's last frames it keeps
            out = pipe(prompt, num_frames=start + 16, video=clip,
                       generator=torch.Generator().manual_seed(seed)).frames[0]  # fmt: skip
            s = score(analyse(out[start:]), want)
            kept[name] += s["color"] and s["shape"]
            moved += name == "world_clip" and s["motion"]
    return {f"color_and_shape_kept ({k})": v / n for k, v in kept.items()} | {
        "motion (world_clip)": moved / n,
        "color_and_shape_kept (tokenizer ceiling)": ceiling / n,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100, help="cases per part (schedule: n // 2)")
    p.add_argument("--parts", nargs="+", default=["persistence", "schedule", "continuation"])
    p.add_argument("--baseline-n", type=int, help="cases of the whole-clip baseline (default n)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--checkpoint", help="pipeline directory (default: the shipped model)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = LumosPipeline.from_pretrained(args.checkpoint, device="cpu")
    results = {}
    for part in args.parts:
        t = time.perf_counter()
        if part == "persistence":
            results["persistence (sliding window)"] = persistence(pipe, args.n, None)
            results["persistence (whole-clip context)"] = persistence(
                pipe, args.baseline_n or args.n, 33
            )
        elif part == "schedule":
            results["schedule"] = schedule(pipe, max(1, args.n // 2))
        else:
            results["continuation"] = continuation(pipe, args.n)
        print(f"{part}: {time.perf_counter() - t:.0f} s", flush=True)
        for name, r in results.items():
            if name.startswith(part):
                print(f"  {name}: " + ", ".join(f"{k} {v:.0%}" for k, v in r.items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

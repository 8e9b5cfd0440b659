"""A procedural captioned-video world: coloured shapes moving on flat backgrounds.

Used to train and to measure quality without downloads. Everything is deterministic from
a seed. A scene holds one or two objects (shape, colour, size, motion, start position) on
a background; :func:`render` draws it at any canvas size and frame count as uint8 RGB
frames ``[T, H, W, 3]``, :func:`caption` describes it in one of several paraphrases and
:func:`parse_caption` recovers the requested attributes from such a text.

Geometry (all in units that do not depend on the canvas):

* Positions ``x, y`` are centres in canvas fractions (0 = left/top, 1 = right/bottom).
* An object's half extent is ``SIZE_RADIUS[size] * min(H, W)`` pixels, so shapes keep
  square pixels on non-square canvases. Every shape lies inside the box
  ``centre +- half extent``.
* A moving object travels ``TRAVEL`` of the canvas along its axis over the whole clip
  (linearly, frame 0 to frame T-1), whatever T is. Start positions are chosen so that every
  object stays inside the canvas and two objects keep a gap of at least ``GAP * min(H, W)``
  pixels between their boxes in every frame, for every canvas size.

Splits: ``train`` never uses a (colour, shape) pair of :data:`HELDOUT_PAIRS`; in
``heldout`` at least one object uses such a pair. Every held-out colour and shape occurs in
training with other partners.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from lumos.errors import LumosError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (40, 200, 50),
    "blue": (40, 90, 250),
    "yellow": (245, 230, 40),
    "cyan": (40, 225, 235),
    "magenta": (225, 45, 225),
    "white": (245, 245, 245),
    "orange": (250, 135, 15),
}
SIZES: tuple[str, ...] = ("small", "large")
SIZE_RADIUS: dict[str, float] = {"small": 0.12, "large": 0.2}  # half extent / min(H, W)
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still")
MOTION_VECTORS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "still": (0, 0),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "grey": (100, 100, 100),
    "navy": (15, 25, 85),
}
SPLITS: tuple[str, ...] = ("train", "heldout")
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "square"),
        ("green", "diamond"),
        ("blue", "circle"),
        ("yellow", "triangle"),
        ("cyan", "cross"),
        ("magenta", "square"),
        ("white", "diamond"),
        ("orange", "circle"),
    }
)
TRAIN_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (c, s) for c in COLORS for s in SHAPES if (c, s) not in HELDOUT_PAIRS
)
TRAVEL = 0.35  # displacement of a moving object over a clip, fraction of the canvas axis
MARGIN = 0.03  # minimum distance of an object's box from the canvas edge, fraction of min(H, W)
GAP = 0.08  # minimum gap between two objects' boxes, fraction of min(H, W)
SUPERSAMPLE = 4  # anti-aliasing: coverage is averaged over SUPERSAMPLE**2 points per pixel

# Shape geometry in units of the half extent r (v points down).
SQUARE_HALF = 0.85
CROSS_ARM = 0.34  # half width of the cross's arms


@dataclass(frozen=True)
class WorldObject:
    """One object; ``x, y`` is its start centre in canvas fractions."""

    shape: str
    color: str
    size: str
    motion: str
    x: float
    y: float

    def position(self, t: float | np.ndarray) -> tuple[float | np.ndarray, float | np.ndarray]:
        """Centre (x, y) in canvas fractions at clip time ``t`` in [0, 1] (scalar or array)."""
        dx, dy = MOTION_VECTORS[self.motion]
        return self.x + dx * TRAVEL * t, self.y + dy * TRAVEL * t


@dataclass(frozen=True)
class Scene:
    objects: tuple[WorldObject, ...]
    background: str


@dataclass(frozen=True)
class ObjectSpec:
    """What a caption says about one object; None means not said."""

    color: str
    shape: str
    size: str | None = None
    motion: str | None = None


@dataclass(frozen=True)
class SceneSpec:
    """What a caption asks for (see :func:`parse_caption`)."""

    objects: tuple[ObjectSpec, ...]
    background: str | None = None


@dataclass
class Sample:
    frames: np.ndarray  # uint8 [T, H, W, 3] RGB
    caption: str
    scene: Scene


# ----------------------------------------------------------------------------- sampling


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise LumosError(f"unknown world split {split!r}; use one of {', '.join(SPLITS)}")
    return SPLITS.index(split)


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _draw_pairs(rng: np.random.Generator, split: str, n: int) -> list[tuple[str, str]]:
    """n (colour, shape) pairs with distinct colours, respecting the split."""
    heldout = sorted(HELDOUT_PAIRS)
    all_pairs = [(c, s) for c in COLORS for s in SHAPES]
    while True:
        if split == "train":
            pairs = [_pick(rng, TRAIN_PAIRS) for _ in range(n)]
        else:
            pairs = [_pick(rng, heldout)] + [_pick(rng, all_pairs) for _ in range(n - 1)]
            rng.shuffle(pairs)
        if len({c for c, _ in pairs}) == n:
            return pairs


def _start_range(r: float, direction: int) -> tuple[float, float]:
    """Start coordinate range along one axis keeping the box inside for any canvas."""
    lo, hi = r + MARGIN, 1.0 - r - MARGIN
    if direction < 0:
        lo += TRAVEL
    elif direction > 0:
        hi -= TRAVEL
    return lo, hi


def _separated(objects: list[WorldObject]) -> bool:
    """True if every pair of boxes keeps a gap of GAP along some axis at all times.

    Checked in min(H, W) units on a square canvas; wider or taller canvases only stretch
    distances, so the gap holds for every canvas size.
    """
    ts = np.linspace(0.0, 1.0, 33)
    for i, a in enumerate(objects):
        for b in objects[i + 1 :]:
            need = SIZE_RADIUS[a.size] + SIZE_RADIUS[b.size] + GAP
            ax, ay = a.position(ts)
            bx, by = b.position(ts)
            if not np.all((np.abs(ax - bx) >= need) | (np.abs(ay - by) >= need)):
                return False
    return True


def sample_scene(
    seed: int, split: str = "train", num_objects: int | None = None, still_only: bool = False
) -> Scene:
    """A random scene, the same for the same arguments.

    ``num_objects`` is 1 or 2 (None: either, equally likely). ``still_only`` makes every
    object still (for images). Objects in one scene have distinct colours.
    """
    rng = np.random.default_rng([int(seed), _split_id(split)])
    if num_objects is None:
        num_objects = int(rng.integers(1, 3))
    if num_objects not in (1, 2):
        raise LumosError(f"num_objects must be 1 or 2, got {num_objects}")
    background = _pick(rng, tuple(BACKGROUNDS))
    while True:
        pairs = _draw_pairs(rng, split, num_objects)
        sizes = [_pick(rng, SIZES) for _ in pairs]
        motions = ["still" if still_only else _pick(rng, MOTIONS) for _ in pairs]
        for _ in range(50):
            objects = []
            for (color, shape), size, motion in zip(pairs, sizes, motions, strict=True):
                r = SIZE_RADIUS[size]
                dx, dy = MOTION_VECTORS[motion]
                x = rng.uniform(*_start_range(r, dx))
                y = rng.uniform(*_start_range(r, dy))
                objects.append(WorldObject(shape, color, size, motion, float(x), float(y)))
            if _separated(objects):
                return Scene(tuple(objects), background)


# ----------------------------------------------------------------------------- rendering


def inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u, v), in units of the half extent from the centre (v down), are in the shape."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(au, av) <= SQUARE_HALF
    if shape == "triangle":  # apex up at v = -1, base at v = +1
        return (v <= 1.0) & (au <= (v + 1.0) / 2.0)
    if shape == "diamond":
        return au + av <= 1.0
    if shape == "cross":
        return ((au <= CROSS_ARM) & (av <= 1.0)) | ((av <= CROSS_ARM) & (au <= 1.0))
    raise LumosError(f"unknown shape {shape!r}; use one of {', '.join(SHAPES)}")


def coverage(
    shape: str,
    cx: np.ndarray,
    cy: np.ndarray,
    r: float,
    top: np.ndarray,
    left: np.ndarray,
    height: int,
    width: int,
) -> np.ndarray:
    """Anti-aliased coverage of a shape in pixel windows, one per frame.

    ``cx, cy``: [T] shape centres in pixels (pixel (i, j) covers [j, j+1) x [i, i+1));
    ``r``: half extent in pixels; ``top, left``: [T] integer top-left corners of the windows;
    ``height, width``: window size in pixels. Returns float32 [T, height, width] in [0, 1].
    """
    cx, cy = np.asarray(cx, np.float64), np.asarray(cy, np.float64)
    s = SUPERSAMPLE
    u = (np.asarray(left)[:, None] + (np.arange(width * s) + 0.5) / s - cx[:, None]) / r
    v = (np.asarray(top)[:, None] + (np.arange(height * s) + 0.5) / s - cy[:, None]) / r
    hit = inside(shape, u[:, None, :], v[:, :, None])  # [T, height*s, width*s]
    return hit.reshape(len(cx), height, s, width, s).mean((2, 4), dtype=np.float32)


def _check_canvas(height: int, width: int, num_frames: int) -> None:
    if height < 16 or width < 16:
        raise LumosError(f"canvas {height}x{width} is too small; use height and width >= 16")
    if num_frames < 1:
        raise LumosError(f"num_frames must be >= 1, got {num_frames}")


def render(scene: Scene, height: int, width: int, num_frames: int) -> np.ndarray:
    """Draw a scene as uint8 RGB frames [num_frames, height, width, 3].

    Frame k shows the objects at clip time k / (num_frames - 1); a single frame shows the
    start positions.
    """
    _check_canvas(height, width, num_frames)
    if scene.background not in BACKGROUNDS:
        raise LumosError(f"unknown background {scene.background!r}; use one of {list(BACKGROUNDS)}")
    frames = np.empty((num_frames, height, width, 3), np.float32)
    frames[:] = BACKGROUNDS[scene.background]
    ts = np.arange(num_frames) / max(num_frames - 1, 1)
    scale = min(height, width)
    for obj in scene.objects:
        if obj.color not in COLORS or obj.size not in SIZES or obj.motion not in MOTIONS:
            raise LumosError(f"invalid world object {obj}")
        r = SIZE_RADIUS[obj.size] * scale
        x, y = obj.position(ts)
        win = int(np.ceil(2 * r)) + 3  # window side in pixels, centred on the shape
        top = np.floor(y * height - win / 2).astype(np.int64) + 1
        left = np.floor(x * width - win / 2).astype(np.int64) + 1
        alpha = coverage(obj.shape, x * width, y * height, r, top, left, win, win)
        color = np.asarray(COLORS[obj.color], np.float32)
        for k in range(num_frames):
            t0, l0 = max(top[k], 0), max(left[k], 0)
            t1, l1 = min(top[k] + win, height), min(left[k] + win, width)
            if t1 <= t0 or l1 <= l0:
                continue
            a = alpha[k, t0 - top[k] : t1 - top[k], l0 - left[k] : l1 - left[k], None]
            region = frames[k, t0:t1, l0:l1]
            region += a * (color - region)
    return np.rint(frames).astype(np.uint8)


# ----------------------------------------------------------------------------- captions

_MOVES = {  # third person singular verb phrases
    "left": ("moves to the left", "moves left", "slides to the left", "drifts left"),
    "right": ("moves to the right", "moves right", "slides to the right", "drifts right"),
    "up": ("moves up", "moves upward", "rises", "floats up"),
    "down": ("moves down", "moves downward", "falls", "sinks down"),
    "still": ("stays still", "does not move", "stays in place", "remains still"),
}
_MOVING = {  # participle phrases
    "left": ("moving to the left", "moving left", "sliding left"),
    "right": ("moving to the right", "moving right", "sliding right"),
    "up": ("moving up", "moving upward", "rising"),
    "down": ("moving down", "moving downward", "falling"),
    "still": ("standing still", "not moving", "staying in place"),
}
_BACKGROUND_SUFFIX = (" on a {} background", " against a {} background", ", {} background")
_VIDEO_ONE = (
    "{a} {m}",
    "{a} {g}",
    "a video of {a} {g}",
    "there is {a} that {m}",
)
_VIDEO_TWO = (
    "{a} {m} and {b} {m2}",
    "{a} {m} while {b} {m2}",
    "{a} {g} and {b} {g2}",
    "a video of {a} {g} and {b} {g2}",
)
_IMAGE_ONE = ("{a}", "a picture of {a}", "an image of {a}", "there is {a}")
_IMAGE_TWO = (
    "{a} and {b}",
    "a picture of {a} and {b}",
    "{a} next to {b}",
    "an image of {a} and {b}",
)


def _noun_phrase(obj: WorldObject, with_size: bool) -> str:
    words = ([obj.size] if with_size else []) + [obj.color, obj.shape]
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def caption(scene: Scene, seed: int, image: bool = False) -> str:
    """A paraphrase describing the scene, chosen by ``seed``.

    Always names every object's colour and shape and, for videos, its motion; sometimes its
    size and the background. Image captions (``image=True``) say nothing about motion.
    """
    rng = np.random.default_rng([int(seed), 7])
    phrases = [_noun_phrase(o, bool(rng.random() < 0.5)) for o in scene.objects]
    if len(phrases) not in (1, 2):
        raise LumosError(f"captions support 1 or 2 objects, got {len(phrases)}")
    fields = {"a": phrases[0], "b": phrases[-1]}
    if image:
        template = _pick(rng, _IMAGE_ONE if len(phrases) == 1 else _IMAGE_TWO)
    else:
        template = _pick(rng, _VIDEO_ONE if len(phrases) == 1 else _VIDEO_TWO)
        first, last = scene.objects[0].motion, scene.objects[-1].motion
        fields |= {
            "m": _pick(rng, _MOVES[first]),
            "g": _pick(rng, _MOVING[first]),
            "m2": _pick(rng, _MOVES[last]),
            "g2": _pick(rng, _MOVING[last]),
        }
    text = template.format(**fields)
    if rng.random() < 0.5:
        text += _pick(rng, _BACKGROUND_SUFFIX).format(scene.background)
    return text


_SYNONYMS = {
    "gray": "grey",
    "big": "large",
    "tiny": "small",
    "little": "small",
    "upward": "up",
    "upwards": "up",
    "rises": "up",
    "rising": "up",
    "downward": "down",
    "downwards": "down",
    "falls": "down",
    "falling": "down",
    "sinks": "down",
    "sinking": "down",
    "stationary": "still",
    "static": "still",
    "motionless": "still",
}


def parse_caption(text: str) -> SceneSpec:
    """The objects (colour, shape, and size/motion if said) and background a caption asks for.

    Understands the captions of :func:`caption` and similar free text: an object is a
    colour word followed by a shape word (a size word may come first); the first motion
    word after it ("left", "right", "up", "down", "still", "not moving", "in place", ...)
    and before the next object is its motion; "<colour> background" names the background.
    Raises LumosError if no object is found or a colour or shape word is left dangling.
    """
    words = [_SYNONYMS.get(w, w) for w in re.findall(r"[a-z]+", text.lower())]
    background = None
    objects: list[dict] = []
    color = size = None
    for i, w in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if w in BACKGROUNDS and nxt == "background":
            background = w
        elif w in SIZES:
            size = w
        elif w in COLORS:
            if color is not None:
                raise LumosError(f"caption {text!r}: colour {color!r} is not followed by a shape")
            color = w
        elif w in SHAPES:
            if color is None:
                raise LumosError(
                    f"caption {text!r}: the {w} has no colour; use one of {', '.join(COLORS)}"
                )
            objects.append({"color": color, "shape": w, "size": size, "motion": None})
            color = size = None
        elif objects and objects[-1]["motion"] is None and color is None and size is None:
            if w in MOTIONS:
                objects[-1]["motion"] = w
            elif (w, nxt) in {("not", "move"), ("not", "moving"), ("in", "place")}:
                objects[-1]["motion"] = "still"
    if color is not None:
        raise LumosError(f"caption {text!r}: colour {color!r} is not followed by a shape")
    if not objects:
        raise LumosError(
            f"caption {text!r} names no object; say e.g. 'a red circle moves to the left'"
        )
    return SceneSpec(tuple(ObjectSpec(**o) for o in objects), background)


# ----------------------------------------------------------------------------- dataset


class ProceduralWorld:
    """Map-style dataset of captioned clips: ``world[i]`` is always the same :class:`Sample`.

    A fraction ``image_fraction`` of the indices (chosen by a hash of the index) are images:
    one frame of a scene whose objects are all still, with an image caption.
    """

    def __init__(
        self,
        split: str = "train",
        height: int = 64,
        width: int = 64,
        num_frames: int = 9,
        seed: int = 0,
        image_fraction: float = 0.0,
        length: int = 10**9,
    ):
        _split_id(split)
        _check_canvas(height, width, num_frames)
        if not 0.0 <= image_fraction <= 1.0:
            raise LumosError(f"image_fraction must be in [0, 1], got {image_fraction}")
        if length < 1:
            raise LumosError(f"length must be >= 1, got {length}")
        self.split, self.height, self.width, self.num_frames = split, height, width, num_frames
        self.seed, self.image_fraction, self.length = seed, image_fraction, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for a world of length {self.length}")
        state = np.random.SeedSequence([self.seed, _split_id(self.split), i]).generate_state(3)
        is_image = bool(state[2] / 2**32 < self.image_fraction)
        scene = sample_scene(int(state[0]), self.split, still_only=is_image)
        frames = render(scene, self.height, self.width, 1 if is_image else self.num_frames)
        return Sample(frames, caption(scene, int(state[1]), image=is_image), scene)

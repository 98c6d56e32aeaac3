"""A small synthetic video dataset whose answers can only be read from the frames.

Each video (128x96, 8 fps, 8-16 s, H.264 or else MPEG-4, mp4) shows two or three shapes
(circle, square, triangle; red, green, blue, yellow; each shape and colour at most once)
on a grey, sometimes slightly noisy background. Each shape does one thing during its own
interval on a 0.5 s grid: it is visible only then ("appear"), moves vertically ("move"),
takes the unused colour ("recolour"), or nothing ("static"). Video i is planned by
`default_rng([seed, i])`: the same seed gives byte-identical JSON and identical frames.

Questions: tvg, one per event, as a Charades-STA-style event description ("the red circle
is visible", the prompt builder asks for its start and end) with [start, end] in seconds;
mcq "What colour is the square?" (the four colours, shuffled) and, when a shape moves,
"Which shape moves?" (the mover, the other shapes and absent ones, shuffled). Intervals,
colours and letters vary per video, so the text alone never gives the answer away.

Written under `out_dir`: `videos/synth_NNNN.mp4`; `train.json`/`test.json` (split by
video) in the Temporal-R1 record layout; `train.yaml`/`test.yaml` data configs with paths
relative to the YAML. Record fields: dataset "synth", id, task ("tvg" | "mcq"), video
(relative to the data folder), problem (no options, no answer format), video_length (s);
tvg solution `<answer>{"start_time": "S", "end_time": "E"}</answer>` in seconds; mcq
options (texts in letter order, no "A." prefix) and solution `<answer>B</answer>`.
Departure: Temporal-R1's own trainer feeds `solution` to its IoU as [start, end] divided
by the video length; the string form here is the one vidrl's reader and rewards parse.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from vidrl.data.sample import Sample

COLOURS: Mapping[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
}
SHAPES = ("circle", "square", "triangle")
Behaviour = Literal["appear", "move", "recolour", "static"]
DATASET_NAME = "synth"
GRID_S = 0.5
"""Interval ends lie on this grid (seconds): whole frames at any fps that divides by 2."""
MIN_MOVE_PX = 30
"""A mover travels at least this far, so its motion is plain even at 2 sampled fps."""
SHAPE_RADIUS = (9, 12)
"""Shape radius range in pixels (closed) unless a caller asks for another."""

_EVENT_PHRASES: Mapping[str, tuple[str, ...]] = {
    "appear": ("the {colour} {shape} is visible", "the {colour} {shape} is on screen"),
    "move": ("the {colour} {shape} is moving", "the {colour} {shape} moves"),
    "recolour": ("the {shape} is {alt}", "the {shape} is coloured {alt}"),
}


@dataclass(frozen=True, slots=True)
class ShapeTrack:
    """One shape and what it does; positions are pixel centres (x, y).

    interval: seconds [start, end) of the event (visible / moving / in alt_colour);
              (0, 0) for a static shape.
    """

    shape: str
    colour: str
    behaviour: Behaviour
    interval: tuple[float, float]
    start_xy: tuple[float, float]
    end_xy: tuple[float, float]
    radius: int
    alt_colour: str | None = None

    def state(self, t: float) -> tuple[bool, tuple[float, float], str]:
        """(visible, centre, colour name) at time t seconds."""
        start, end = self.interval
        during = start <= t < end
        if self.behaviour == "appear":
            return during, self.start_xy, self.colour
        if self.behaviour == "recolour":
            return True, self.start_xy, (self.alt_colour or self.colour) if during else self.colour
        if self.behaviour == "move":
            progress = min(max((t - start) / (end - start), 0.0), 1.0)
            (x0, y0), (x1, y1) = self.start_xy, self.end_xy
            return True, (x0 + (x1 - x0) * progress, y0 + (y1 - y0) * progress), self.colour
        return True, self.start_xy, self.colour

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True, slots=True)
class Scene:
    """Everything needed to render one video and to ask about it."""

    index: int
    duration: float
    fps: int
    width: int
    height: int
    background: int
    noise: int
    noise_seed: int
    tracks: tuple[ShapeTrack, ...]

    @property
    def name(self) -> str:
        return f"synth_{self.index:04d}"

    @property
    def num_frames(self) -> int:
        return round(self.duration * self.fps)


@dataclass(frozen=True)
class SynthResult:
    """What `synthesize` wrote.

    annotations: split ("train" | "test") -> one dict per question holding exactly the
                 fields of `Sample` (video as an absolute path), so `Sample(**a)` works.
    """

    root: Path
    train_json: Path
    test_json: Path
    train_yaml: Path
    test_yaml: Path
    scenes: tuple[Scene, ...]
    annotations: Mapping[str, tuple[dict[str, Any], ...]]

    def samples(self, split: str) -> tuple[Sample, ...]:
        return tuple(Sample(**a) for a in self.annotations[split])


def synthesize(
    out_dir: str | Path,
    num_videos: int = 48,
    seed: int = 0,
    *,
    width: int = 128,
    height: int = 96,
    fps: int = 8,
    min_seconds: int = 8,
    max_seconds: int = 16,
    test_fraction: float = 0.25,
    shape_radius: tuple[int, int] = SHAPE_RADIUS,
) -> SynthResult:
    """Render `num_videos` videos and write their questions; see the module docstring.
    `shape_radius`: the closed range of shape radii in pixels."""
    if num_videos < 1 or not 4 <= min_seconds <= max_seconds or not 0 <= test_fraction < 1:
        raise ValueError("need num_videos >= 1, 4 <= min_seconds <= max_seconds, 0 <= test_fraction < 1")
    if fps % 2 or width < 64 or height < 64:
        raise ValueError("fps must be even (intervals lie on a 0.5 s grid), frames at least 64x64")
    root = Path(out_dir).resolve()
    (root / "videos").mkdir(parents=True, exist_ok=True)
    scenes = tuple(
        plan_scene(seed, i, width, height, fps, min_seconds, max_seconds, shape_radius)
        for i in range(num_videos)
    )
    num_train = num_videos - _num_test(num_videos, test_fraction)
    annotations = {
        "train": _write_split(root, "train", scenes[:num_train], seed),
        "test": _write_split(root, "test", scenes[num_train:], seed),
    }
    return SynthResult(
        root=root,
        train_json=root / "train.json",
        test_json=root / "test.json",
        train_yaml=root / "train.yaml",
        test_yaml=root / "test.yaml",
        scenes=scenes,
        annotations=annotations,
    )


def _num_test(num_videos: int, test_fraction: float) -> int:
    """At least one test video when a fraction is asked for, and at least one for training."""
    if test_fraction == 0 or num_videos < 2:
        return 0
    return min(max(round(num_videos * test_fraction), 1), num_videos - 1)


def _write_split(root: Path, split: str, scenes: tuple[Scene, ...], seed: int) -> tuple[dict[str, Any], ...]:
    """Encode the split's videos, write `{split}.json` and `{split}.yaml`; the annotations."""
    records: list[dict[str, Any]] = []
    found: list[dict[str, Any]] = []
    for scene in scenes:
        relative = f"videos/{scene.name}.mp4"
        write_video(root / relative, scene)
        for question in ask(scene, np.random.default_rng([seed, scene.index, 1])):
            records.append(_record(question, relative, scene.duration))
            found.append({**question, "video": str(root / relative)})
    (root / f"{split}.json").write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    _write_data_config(root / f"{split}.yaml", f"{split}.json")
    return tuple(found)


def plan_scene(
    seed: int,
    index: int,
    width: int,
    height: int,
    fps: int,
    min_seconds: int,
    max_seconds: int,
    radius: tuple[int, int] = SHAPE_RADIUS,
) -> Scene:
    """The random plan of video `index`: duration, background, and 2-3 shape tracks whose
    radius (pixels) is drawn from the closed range `radius`."""
    rng = np.random.default_rng([seed, index])
    duration = float(rng.integers(min_seconds, max_seconds + 1))
    count = int(rng.integers(2, 4))
    shapes = [str(s) for s in rng.permutation(SHAPES)[:count]]
    colours = [str(c) for c in rng.permutation(list(COLOURS))]
    slots = rng.permutation(count)
    behaviours = _behaviours(rng, count)
    tracks = []
    for i, behaviour in enumerate(behaviours):
        size = int(rng.integers(radius[0], radius[1] + 1))
        x = width * (slots[i] + 0.5) / count
        y0 = float(rng.uniform(size + 2, height - size - 2))
        end_xy = (x, _move_target(rng, y0, size, height)) if behaviour == "move" else (x, y0)
        tracks.append(
            ShapeTrack(
                shape=shapes[i],
                colour=colours[i],
                behaviour=behaviour,
                interval=(0.0, 0.0) if behaviour == "static" else _interval(rng, duration),
                start_xy=(x, y0),
                end_xy=end_xy,
                radius=size,
                # colours[count] is unused by every shape, so a recoloured shape stays unique.
                alt_colour=colours[count] if behaviour == "recolour" else None,
            )
        )
    return Scene(
        index=index,
        duration=duration,
        fps=fps,
        width=width,
        height=height,
        background=int(rng.integers(50, 111)),
        noise=int(rng.choice([0, 3, 6])),
        noise_seed=int(rng.integers(2**31)),
        tracks=tuple(tracks),
    )


def _behaviours(rng: np.random.Generator, count: int) -> list[Behaviour]:
    """At most one mover (so "which shape moves" has one answer), at most one recolour,
    and at least one event."""
    chosen: list[Behaviour] = []
    for _ in range(count):
        allowed: list[Behaviour] = ["appear", "static"]
        allowed += [b for b in ("move", "recolour") if b not in chosen]
        chosen.append(allowed[int(rng.integers(len(allowed)))])
    if all(b == "static" for b in chosen):
        chosen[int(rng.integers(count))] = "appear"
    return chosen


def _interval(rng: np.random.Generator, duration: float) -> tuple[float, float]:
    """[start, end] on the 0.5 s grid with 0.5 <= start and end <= duration - 0.5,
    lasting 1.5 s to 60% of the video."""
    steps = round(duration / GRID_S)
    start = int(rng.integers(1, steps - 4))
    longest = min(int(steps * 0.6), steps - 1 - start)
    length = int(rng.integers(3, longest + 1))
    return start * GRID_S, (start + length) * GRID_S


def _move_target(rng: np.random.Generator, y0: float, radius: int, height: int) -> float:
    low, high = radius + 2, height - radius - 2
    # Large shapes leave less room: the far edge then, even if short of MIN_MOVE_PX.
    if y0 < height / 2:
        return float(rng.uniform(min(y0 + MIN_MOVE_PX, high), high))
    return float(rng.uniform(low, max(y0 - MIN_MOVE_PX, low)))


def ask(scene: Scene, rng: np.random.Generator) -> list[dict[str, Any]]:
    """The questions about `scene`, as Sample fields (without the video path)."""
    questions = []
    for track in scene.tracks:
        if track.behaviour != "static":
            phrases = _EVENT_PHRASES[track.behaviour]
            text = phrases[int(rng.integers(len(phrases)))].format(
                colour=track.colour, shape=track.shape, alt=track.alt_colour
            )
            questions.append(_question(scene, "tvg", text, timestamps=(track.interval,)))
    steady = [t for t in scene.tracks if t.behaviour != "recolour"]
    target = steady[int(rng.integers(len(steady)))]
    colours = _place(target.colour, [str(c) for c in rng.permutation(list(COLOURS))], scene.index)
    questions.append(
        _question(
            scene,
            "mcq",
            f"What colour is the {target.shape}?",
            options=tuple(colours),
            answer=_letter(colours.index(target.colour)),
        )
    )
    movers = [t for t in scene.tracks if t.behaviour == "move"]
    if movers:
        mover = f"the {movers[0].name}"
        options = tuple(_place(mover, list(_mover_options(rng, scene, movers[0])), scene.index + 2))
        answer = _letter(options.index(mover))
        questions.append(_question(scene, "mcq", "Which shape moves?", options, answer))
    for number, question in enumerate(questions):
        question["id"] = f"{scene.name}_q{number}"
    return questions


def _place(answer: str, options: list[str], index: int) -> list[str]:
    """`options` with `answer` moved to position index mod 4 (the others keep their random order),
    so that across consecutive videos every letter is the answer equally often: with random
    positions a split of 50 questions had A right 10 times and its training split 15 of 47, and a
    model that learned only the letter prior lost held-out accuracy by learning it."""
    rest = [o for o in options if o != answer]
    rest.insert(index % len(options), answer)
    return rest


def _mover_options(rng: np.random.Generator, scene: Scene, mover: ShapeTrack) -> tuple[str, ...]:
    """The mover, the shapes that stay put, then shapes absent from the video, shuffled."""
    present = [t.name for t in scene.tracks]
    absent = [f"{c} {s}" for s in SHAPES for c in COLOURS if f"{c} {s}" not in present]
    names = [mover.name] + [n for n in present if n != mover.name]
    names += [absent[i] for i in rng.permutation(len(absent))[: 4 - len(names)]]
    return tuple(f"the {names[i]}" for i in rng.permutation(4))


def _question(
    scene: Scene,
    task: str,
    text: str,
    options: tuple[str, ...] = (),
    answer: str | None = None,
    timestamps: tuple[tuple[float, float], ...] = (),
) -> dict[str, Any]:
    """The fields of a `Sample`, but for the video path; the id is set by `ask`."""
    fields = {"task": task, "question": text, "duration": scene.duration, "options": options}
    return {"id": "", **fields, "answer": answer, "timestamps": timestamps, "dataset": DATASET_NAME}


def _letter(index: int) -> str:
    return chr(ord("A") + index)


def _record(question: Mapping[str, Any], video: str, duration: float) -> dict[str, Any]:
    """One Temporal-R1-style record; see the module docstring for the encodings."""
    record: dict[str, Any] = {
        "id": question["id"],
        "dataset": DATASET_NAME,
        "task": question["task"],
        "video": video,
        "problem": question["question"],
    }
    if question["task"] == "tvg":
        start, end = question["timestamps"][0]
        answer = json.dumps({"start_time": f"{start:.1f}", "end_time": f"{end:.1f}"})
        record["solution"] = f"<answer>{answer}</answer>"
    else:
        record["options"] = list(question["options"])
        record["solution"] = f"<answer>{question['answer']}</answer>"
    record["video_length"] = duration
    return record


def _write_data_config(path: Path, json_name: str) -> None:
    entry = {"json_path": json_name, "data_folder": ".", "sampling_strategy": "all"}
    path.write_text(yaml.safe_dump({"datasets": [entry]}, sort_keys=False), encoding="utf-8")


def render_frames(scene: Scene, indices: Iterable[int] | None = None) -> Iterator[np.ndarray]:
    """uint8 [H, W, 3] RGB frames of `scene`, frame i showing time i / fps: every frame, or the
    frames at `indices` (a caller that samples a few frames need not draw the others)."""
    noise_rng = np.random.default_rng(scene.noise_seed)
    shape = (scene.height, scene.width)
    grain = noise_rng.integers(-scene.noise, scene.noise + 1, size=shape) if scene.noise else 0
    grey = np.clip(scene.background + grain, 0, 255).astype(np.uint8)
    background = np.repeat(np.broadcast_to(grey, shape)[..., None], 3, axis=2)
    ys, xs = np.mgrid[0 : scene.height, 0 : scene.width]
    for i in range(scene.num_frames) if indices is None else indices:
        frame = background.copy()
        for track in scene.tracks:
            visible, (x, y), colour = track.state(int(i) / scene.fps)
            if visible:
                frame[shape_mask(track.shape, xs - x, ys - y, track.radius)] = COLOURS[colour]
        yield frame


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, radius: int) -> np.ndarray:
    """bool [H, W]: pixels inside `shape` centred at offset (0, 0)."""
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        return (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
    # Triangle pointing up: half-width grows from 0 at the apex to `radius` at the base.
    return (np.abs(dy) <= radius) & (np.abs(dx) <= (dy + radius) / 2)


def write_video(path: Path, scene: Scene) -> None:
    """Encode `scene` as mp4: H.264 (libx264) when this FFmpeg build has it, else MPEG-4."""
    import av  # here: only synthesis writes video

    codec, options = _encoder(av, scene.fps)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=scene.fps)
        stream.width, stream.height, stream.pix_fmt = scene.width, scene.height, "yuv420p"
        stream.options = options
        for index, frame in enumerate(render_frames(scene)):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = index
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))


def _encoder(av: Any, fps: int) -> tuple[str, dict[str, str]]:
    # A key frame every second keeps seeking to sampled frames cheap; one thread keeps
    # the bitstream identical from run to run.
    common = {"g": str(fps), "threads": "1"}
    try:
        av.codec.Codec("libx264", "w")
    except Exception:  # this FFmpeg build has no libx264
        return "mpeg4", {**common, "b": "1000000"}
    return "libx264", {**common, "preset": "ultrafast", "crf": "18"}

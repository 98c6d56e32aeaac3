"""Perception questions about a synthetic scene, for pretraining a tiny model to read frames.

A random model learns the answer format from SFT but not to look: its answers come from the
text alone (vidrl.data.synth's questions are built so that the text never gives them away).
Pretraining on questions whose only source of truth is the frames teaches it to look. The
questions here are phrased unlike the evaluation's (`synth.ask`): open questions answered by a
word ("Name the colour of the square." -> `red`), counting, the mover's direction (which only
the frames' order tells), and multiple choice in other words ("Which colour does the square
have?"), so that a held-out score on `synth.ask`'s phrasing measures perception, not a memorised
sentence.

Pure: no torch, no model. `scene_clip` renders only the frames a run would sample and resizes
them as decoding does, so pretraining needs no mp4 files (the held-out evaluation reads real
ones).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from vidrl.data.prompts import SYSTEM_DIRECT, ChatTemplater, PromptConfig, render_prompt
from vidrl.data.sample import Sample
from vidrl.data.synth import COLOURS, SHAPES, Scene, ask, render_frames, shape_mask
from vidrl.data.video import Clip, VideoConfig, frame_size, resize_frames, sample_frame_indices

Kind = Literal["colour", "count", "mover", "direction", "mcq_colour", "mcq_mover"]
KINDS: tuple[Kind, ...] = ("colour", "count", "mover", "direction", "mcq_colour", "mcq_mover")
PROBE_CLASSES = (1 + len(COLOURS), 1 + len(SHAPES), 2)
"""Classes of each visual token's three targets (`token_targets`): colour (0 none), shape (0 none),
moving (0 no, 1 yes)."""
MIN_COVER = 0.1
"""A visual token is about a shape when the shape covers at least this share of its pixels."""
NO_MOVER = "none"
"""The answer to "Name the colour of the moving shape." when nothing moves."""


@dataclass(frozen=True, slots=True)
class PerceptionQuestion:
    """One question about a scene: the prompt text (chat template applied) and the answer word
    (a colour, a count, up/down, none, or a letter), written as `<answer>word</answer>`."""

    kind: Kind
    prompt: str
    answer: str


def scene_clip(scene: Scene, video: VideoConfig) -> Clip:
    """The clip decoding the scene's mp4 would give (same frame indices, same size), drawn
    directly: only the sampled frames are rendered."""
    indices = sample_frame_indices(scene.num_frames, scene.fps, video)
    height, width = frame_size(scene.height, scene.width, len(indices), video)
    frames = resize_frames(np.stack(list(render_frames(scene, indices))), height, width)
    return Clip(
        frames=frames,
        timestamps=indices / scene.fps,
        frame_indices=indices,
        fps=float(scene.fps),
        duration=scene.duration,
        source=f"{scene.name} (rendered)",
    )


def token_targets(scene: Scene, clip: Clip, cell: int) -> np.ndarray:
    """int64 [tokens, 3]: what each merged visual token of `clip` shows, in the model's token order
    (temporal patch, then rows, then columns of `cell`-pixel squares): the colour and shape of
    the shape covering most of its pixels over the patch's two frames (0 when none covers
    MIN_COVER), and whether that shape is moving then. Dense targets for a probe on the vision
    tower's output (vidrl.cluster.pretrain): every token says what the tower should see there."""
    frames, height, width, _ = clip.frames.shape
    scale_x, scale_y = width / scene.width, height / scene.height
    ys, xs = np.mgrid[0:height, 0:width]
    colours, shapes = list(COLOURS), list(SHAPES)
    targets = []
    for first in range(0, frames - 1, 2):
        owner = np.full((2, height, width), -1)
        for offset in (0, 1):
            seconds = clip.frame_indices[first + offset] / scene.fps
            for number, track in enumerate(scene.tracks):
                visible, (x, y), _ = track.state(seconds)
                if visible:
                    mask = shape_mask(track.shape, xs - x * scale_x, ys - y * scale_y, track.radius * scale_x)
                    owner[offset][mask] = number
        start = clip.frame_indices[first] / scene.fps
        for row in range(height // cell):
            for column in range(width // cell):
                square = owner[:, row * cell : (row + 1) * cell, column * cell : (column + 1) * cell]
                covered = [int((square == n).sum()) for n in range(len(scene.tracks))]
                best = int(np.argmax(covered))
                if covered[best] < MIN_COVER * square.size:
                    targets.append((0, 0, 0))
                    continue
                track = scene.tracks[best]
                _, _, colour = track.state(start)
                moving = track.behaviour == "move" and track.interval[0] <= start < track.interval[1]
                targets.append((1 + colours.index(colour), 1 + shapes.index(track.shape), int(moving)))
    return np.asarray(targets, dtype=np.int64)


def open_prompt(question: str, templater: ChatTemplater) -> str:
    """A video question answered by one word inside <answer> tags (the direct-answer system)."""
    messages = [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_DIRECT}]},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]},
    ]
    return str(templater.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def perception_questions(
    scene: Scene, templater: ChatTemplater, rng: np.random.Generator
) -> list[PerceptionQuestion]:
    """Every kind of question that has an answer in `scene` (the mover's direction only when a
    shape moves)."""
    # At most one shape is recoloured and every scene has two or more: one keeps its colour.
    steady = [t for t in scene.tracks if t.behaviour != "recolour"]
    target = steady[int(rng.integers(len(steady)))]
    movers = [t for t in scene.tracks if t.behaviour == "move"]
    questions = [
        PerceptionQuestion(
            "colour", open_prompt(f"Name the colour of the {target.shape}.", templater), target.colour
        ),
        PerceptionQuestion(
            "count", open_prompt("How many shapes are in the video?", templater), str(len(scene.tracks))
        ),
        PerceptionQuestion(
            "mover",
            open_prompt("Name the colour of the moving shape.", templater),
            movers[0].colour if movers else NO_MOVER,
        ),
    ]
    if movers:
        mover = movers[0]
        way = "down" if mover.end_xy[1] > mover.start_xy[1] else "up"
        asked = f"Does the {mover.name} move up or down?"
        questions.append(PerceptionQuestion("direction", open_prompt(asked, templater), way))
    prompt_cfg = PromptConfig(think=False)
    for question in evaluation_mcqs(scene, rng):
        kind: Kind = "mcq_colour" if question.question.startswith("What colour") else "mcq_mover"
        reworded = replace(question, question=_reworded(question.question))
        # Twice: as the evaluation orders the options, and in a fresh order (the letter is the
        # skill that is slowest to learn: it needs the frames and the option lines at once).
        for variant in (reworded, _reordered(reworded, rng)):
            prompt = render_prompt(variant, prompt_cfg, templater)
            questions.append(PerceptionQuestion(kind, prompt, variant.answer or ""))
    return questions


def evaluation_mcqs(scene: Scene, rng: np.random.Generator, video: str = "") -> list[Sample]:
    """The scene's multiple-choice questions as the evaluation asks them (`synth.ask`)."""
    return [Sample(**{**q, "video": video}) for q in ask(scene, rng) if q["task"] == "mcq"]


def _reordered(sample: Sample, rng: np.random.Generator) -> Sample:
    """`sample` with its options in a random order and the answer's letter moved with them."""
    order = rng.permutation(len(sample.options))
    options = tuple(sample.options[i] for i in order)
    answer = sample.options[ord(sample.answer or "A") - ord("A")]
    return replace(sample, options=options, answer=chr(ord("A") + options.index(answer)))


def _reworded(question: str) -> str:
    if question.startswith("What colour is the "):
        return f"Which colour does the {question.removeprefix('What colour is the ').rstrip('?')} have?"
    return "Which of these shapes is moving?"

"""Multimodal rotary positions of a prompt's token ids, by the rule vLLM applies to the Qwen VL
families: each run of video pad tokens is one grid of (time, height, width) merged patches placed
at the position after the text before it, and text continues from the largest position so far
plus one.

The families differ in what a run is: a whole video in Qwen2.5-VL (time advances with the
seconds each temporal patch spans), one temporal patch in Qwen3-VL and Qwen3.5 (the time is
written as text, `<t seconds>`, before each patch inside its own vision start/end pair, so the
temporal index of every run is 0). The family modules turn their processor's grid into runs;
`run_positions` does the rest.

Where it departs from transformers 5.19: its Qwen2.5-VL `get_rope_index` continues text after a
video from the video's spatial extent instead of its largest position; the two differ once a
video has 3 or more temporal patches. vLLM's rule is followed so that learner and rollout
log-probs agree. For Qwen3-VL / Qwen3.5 (one temporal patch per run) the two rules coincide.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def run_positions(
    input_ids: torch.Tensor,
    video_token_id: int,
    grids: Sequence[tuple[int, int, int]],
    time_steps: Sequence[float],
    spatial_merge_size: int,
) -> torch.Tensor:
    """Positions [3, P] of prompt ids [P] whose runs of `video_token_id` are, in order, the
    `grids` (time, height, width in patches, before the spatial merge).

    Run r's tokens get (start + floor(t * time_steps[r]), start + h, start + w) on its merged
    grid, start being one past the largest position before it; text continues from the largest
    position so far plus one. A prompt without runs gets 0..P-1 in all three rows.
    """
    ids = input_ids.tolist()
    pieces: list[torch.Tensor] = []
    next_start, cursor, run = 0, 0, 0
    while cursor < len(ids):
        if ids[cursor] != video_token_id:
            end = cursor
            while end < len(ids) and ids[end] != video_token_id:
                end += 1
            pieces.append(torch.arange(next_start, next_start + end - cursor).expand(3, -1))
            cursor = end
        else:
            if run >= len(grids):
                raise ValueError("more runs of video tokens in the prompt than videos in the grid")
            grid_t, grid_h, grid_w = grids[run]
            t_h_w = (grid_t, grid_h // spatial_merge_size, grid_w // spatial_merge_size)
            grid = torch.stack(torch.meshgrid(*(torch.arange(n) for n in t_h_w), indexing="ij"))
            grid[0] = (grid[0] * time_steps[run]).long()
            pieces.append(grid.reshape(3, -1) + next_start)
            cursor += t_h_w[0] * t_h_w[1] * t_h_w[2]
            run += 1
        next_start = int(pieces[-1].max()) + 1
    if run != len(grids):
        raise ValueError(f"{len(grids)} videos in the grid but {run} runs of video tokens")
    return torch.cat(pieces, dim=1).long() if pieces else torch.zeros(3, 0, dtype=torch.long)

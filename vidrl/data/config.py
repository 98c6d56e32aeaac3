"""Where the training and evaluation samples come from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vidrl.configbase import StrictConfig

DataFormat = Literal[
    "auto", "data_config", "temporal_r1", "charades", "activitynet", "mvbench", "gqa", "samples"
]


class DataConfig(StrictConfig):
    train_path: str | None = None
    """Training data: a data-config YAML, a Temporal-R1/Charades-STA/grounded-QA JSON, or .jsonl/.parquet."""
    eval_path: str | None = None
    """Held-out data, in any of the formats train_path accepts (None: no evaluation set)."""
    format: DataFormat = "auto"
    """How to read the files; "auto" decides from the extension and the first record."""
    video_folder: str | None = None
    """Folder holding the videos of a JSON file (a data-config YAML names its own per dataset)."""
    video_extension: str = ".mp4"
    """Appended to Charades-STA video ids to make file names."""
    allow_paths_outside_folder: bool = False
    """Read videos whose path leaves the data folder (an absolute path, or `..` that escapes it);
    by default such a sample is skipped with its reason. vidrl's own sample files (.jsonl,
    .parquet) are confined to `video_folder` only when it is set."""
    check_videos: bool = True
    """Skip samples whose video file is missing or empty when the data is read."""
    max_skipped_fraction: float = Field(0.05, ge=0.0, le=1.0)
    """Stop with an error when more than this fraction of the samples read had to be skipped."""
    sampling_seed: int = 0
    """Seed of the `random:N` and `N%` sampling strategies of data-config YAMLs."""
    max_sample_failures: int = Field(2, ge=1)
    """A sample whose video, request or rewards failed this many times is never drawn again in
    the run (quarantined, listed in the run directory's quarantine.jsonl)."""
    failure_window_samples: int = Field(200, ge=1)
    """The recent draws the failure threshold looks at."""
    max_failed_fraction: float = Field(0.5, gt=0.0, le=1.0)
    """Stop the run when more than this share of the recent draws failed (data or rewards gone bad)."""

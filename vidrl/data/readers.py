"""Reading samples from files: Temporal-R1 data configs and records, Charades-STA and
ActivityNet-Captions annotations, grounded-QA records, MVBench-style multiple-choice
records, and vidrl's own JSONL/Parquet.

Every reader yields checked `Sample`s and reports bad records to a `SkipLog` (one log
line each, naming the file, the record and the reason); `load_samples` checks the
skipped fraction at the end. Nothing here decodes video: `check_videos` only looks at
the file's existence and size, decoding errors are caught where frames are decoded.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vidrl.data.config import DataConfig, DataFormat
from vidrl.data.records import (
    activitynet_records,
    charades_records,
    check_sample,
    gqa_record,
    mvbench_record,
    sample_record,
    sample_to_record,
    temporal_r1_record,
)
from vidrl.data.sample import Sample
from vidrl.data.skips import BadRecord, DataError, SkipLog
from vidrl.overrides import read_yaml_mapping

_STRATEGY = re.compile(r"^(?:(all)|(first|end|random):(\d+)(%?)|(\d+)%)$")


def load_samples(path: str | Path, cfg: DataConfig, skips: SkipLog | None = None) -> list[Sample]:
    """All usable samples of `path`; raises DataError when too many were skipped."""
    skips = skips or SkipLog(cfg.max_skipped_fraction)
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: data file does not exist")
    samples = list(_read(path, cfg.format, cfg, skips))
    if cfg.check_videos:
        samples = [s for s in samples if _video_present(s, skips)]
    skips.check(str(path))
    return samples


def _read(path: Path, fmt: DataFormat, cfg: DataConfig, skips: SkipLog) -> Iterator[Sample]:
    """The samples of one file, each video confined to its data folder (`_confined`)."""
    fmt = _detect_format(path, fmt)
    folder = Path(cfg.video_folder) if cfg.video_folder else path.parent
    # vidrl's own sample files name their videos as given, unless a video folder is configured.
    confine = (
        None if cfg.allow_paths_outside_folder or (fmt == "samples" and not cfg.video_folder) else folder
    )
    for sample in _read_format(path, fmt, folder, cfg, skips):
        if confine is None or _inside(sample.video, confine):
            yield sample
        else:
            skips.skip(
                f"{path} (sample {sample.id})",
                f"video {sample.video} lies outside its data folder {confine} "
                "(data.allow_paths_outside_folder: true allows it)",
                counted=True,
            )


def _inside(video: str, folder: Path) -> bool:
    """Whether `video` resolves (links followed) to a path inside `folder`."""
    return Path(video).resolve().is_relative_to(folder.resolve())


def _read_format(
    path: Path, fmt: DataFormat, folder: Path, cfg: DataConfig, skips: SkipLog
) -> Iterator[Sample]:
    if fmt == "data_config":
        yield from read_data_config(path, skips, cfg.sampling_seed, cfg.allow_paths_outside_folder)
    elif fmt == "temporal_r1":
        yield from read_temporal_r1(path, folder, skips)
    elif fmt == "charades":
        yield from read_charades(path, folder, skips, cfg.video_extension)
    elif fmt == "gqa":
        yield from read_gqa(path, folder, skips)
    elif fmt == "activitynet":
        yield from read_charades(path, folder, skips, cfg.video_extension, activitynet_records)
    elif fmt == "mvbench":
        yield from read_mvbench(path, folder, skips)
    else:
        yield from read_sample_file(path, skips)


def _detect_format(path: Path, fmt: DataFormat) -> DataFormat:
    """Decide from the extension, then from the shape of the first record.

    A JSON object is Charades-STA, or ActivityNet-Captions when its first video id has
    ActivityNet's `v_` prefix; a list whose first record has `candidates` is MVBench-style.
    """
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "data_config"
    if suffix in (".jsonl", ".parquet"):
        return "samples"
    data = _read_json(path)
    if isinstance(data, dict):
        first_id = next(iter(data), "")
        return "activitynet" if str(first_id).startswith("v_") else "charades"
    first = data[0] if isinstance(data, list) and data else {}
    if isinstance(first, dict) and "candidates" in first:
        return "mvbench"
    if isinstance(first, dict) and "problem" in first:
        return "temporal_r1"
    if isinstance(first, dict) and "glue" in first:
        return "gqa"
    raise DataError(f"{path}: cannot tell the data format from the first record; set data.format")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable JSON file: {err}") from err


def _records(path: Path) -> list[Any]:
    data = _read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def read_temporal_r1(path: Path, data_folder: Path, skips: SkipLog) -> Iterator[Sample]:
    yield from _read_each(path, skips, lambda record, where: temporal_r1_record(record, data_folder, where))


def read_gqa(path: Path, video_folder: Path, skips: SkipLog) -> Iterator[Sample]:
    yield from _read_each(path, skips, lambda record, where: gqa_record(record, video_folder, where))


def _read_each(path: Path, skips: SkipLog, read: Callable[[Any, str], Sample]) -> Iterator[Sample]:
    """Every record of a JSON list through `read`; a bad one is skipped with its index."""
    for index, record in enumerate(_records(path)):
        where = f"{path}[{index}]"
        try:
            yield read(record, where)
            skips.ok()
        except BadRecord as err:
            skips.skip(where, str(err))


def read_mvbench(path: Path, video_folder: Path, skips: SkipLog) -> Iterator[Sample]:
    """MVBench-style records; the task type is the file's stem unless a record names its own."""
    yield from _read_each(
        path, skips, lambda record, where: mvbench_record(record, video_folder, where, path.stem)
    )


def read_charades(
    path: Path,
    video_folder: Path,
    skips: SkipLog,
    extension: str,
    entry_samples: Callable[[str, Any, Path, str], list[Sample]] = charades_records,
) -> Iterator[Sample]:
    """Charades-STA annotations (or, with `activitynet_records`, ActivityNet-Captions ones)."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: Charades-STA annotations are a JSON object {{video id: entry}}")
    for vid, entry in data.items():
        try:
            samples = entry_samples(str(vid), entry, video_folder, extension)
        except BadRecord as err:
            skips.skip(f"{path}[{vid!r}]", str(err))
            continue
        for sample in samples:
            try:
                yield check_sample(sample)
                skips.ok()
            except BadRecord as err:
                skips.skip(f"{path}[{sample.id!r}]", str(err))


def read_sample_file(path: Path, skips: SkipLog) -> Iterator[Sample]:
    """vidrl's own samples: JSONL (one object per line) or Parquet (one row per sample)."""
    for where, record in _sample_rows(path):
        try:
            yield sample_record(record, where)
            skips.ok()
        except (BadRecord, TypeError) as err:
            skips.skip(where, str(err))


def _sample_rows(path: Path) -> Iterator[tuple[str, Any]]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        for index, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}[row {index}]", row
        return
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{number}", json.loads(line)
            except json.JSONDecodeError as err:
                yield f"{path}:{number}", f"not JSON ({err.msg})"


def write_samples(path: str | Path, samples: list[Sample]) -> Path:
    """Write samples as JSONL or Parquet (by extension), readable by `read_sample_file`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [sample_to_record(s) for s in samples]
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_data_config(path: Path, skips: SkipLog, seed: int = 0, anywhere: bool = False) -> Iterator[Sample]:
    """A Temporal-R1 data config: `datasets: [{json_path, data_folder, sampling_strategy}]`.

    Relative paths are taken from the YAML's folder. Strategies: `all`; `first:N`,
    `end:N`, `random:N` (N a count, or a percentage such as `first:10%`); and a bare
    `N%`, read as `random:N%`. Random draws are seeded, so a run is reproducible.
    """
    spec = read_yaml_mapping(path)
    entries = spec.get("datasets")
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path}: expected 'datasets: [{{json_path, data_folder, sampling_strategy}}]'")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "json_path" not in entry:
            raise DataError(f"{path}: datasets[{index}] needs a json_path, got {entry!r}")
        json_path = path.parent / str(entry["json_path"])
        folder = path.parent / str(entry.get("data_folder", "."))
        strategy = str(entry.get("sampling_strategy", "all"))
        samples = list(_read(json_path, "auto", _folder_config(folder, anywhere), skips))
        yield from apply_strategy(samples, strategy, random.Random(f"{seed}:{index}"), where=f"{path}")


def _folder_config(folder: Path, anywhere: bool = False) -> DataConfig:
    return DataConfig(
        video_folder=str(folder),
        check_videos=False,
        max_skipped_fraction=1.0,
        allow_paths_outside_folder=anywhere,
    )


def apply_strategy(samples: list[Sample], strategy: str, rng: random.Random, where: str) -> list[Sample]:
    """Keep part of a dataset as a data-config `sampling_strategy` says."""
    match = _STRATEGY.match(strategy.strip())
    if match is None:
        raise DataError(
            f"{where}: sampling_strategy {strategy!r} is not one of: all, first:N, end:N, random:N, N%"
        )
    keep_all, how, count, percent, bare_percent = match.groups()
    if keep_all:
        return samples
    if bare_percent is not None:
        how, count, percent = "random", bare_percent, "%"
    n = int(count)
    size = round(len(samples) * n / 100) if percent else min(n, len(samples))
    if how == "first":
        return samples[:size]
    if how == "end":
        return samples[len(samples) - size :]
    return rng.sample(samples, size)


def _video_present(sample: Sample, skips: SkipLog) -> bool:
    video = Path(sample.video)
    if not video.is_file():
        skips.skip(f"{video} (sample {sample.id})", "video file is missing", counted=True)
        return False
    if video.stat().st_size == 0:
        skips.skip(f"{video} (sample {sample.id})", "video file is empty (0 bytes)", counted=True)
        return False
    return True

"""Weight buckets: exact round trip for every dtype, aligned offsets, bounded sizes."""

from __future__ import annotations

import numpy as np
import torch

from vidrl.weights import ALIGN_BYTES, pack_bucket, split_into_buckets, unpack_bucket


def test_round_trip_keeps_values_dtypes_and_shapes() -> None:
    tensors = [
        ("a.weight", torch.randn(3, 5, dtype=torch.bfloat16)),
        ("b.bias", torch.randn(7)),
        ("c.scale", torch.tensor(2.5, dtype=torch.float16)),
        ("d.empty", torch.empty(0, 4)),
        ("e.t", torch.randn(4, 6).t()),  # non-contiguous input
    ]
    bucket = pack_bucket(3, tensors)
    assert bucket.version == 3
    assert all(e.offset % ALIGN_BYTES == 0 for e in bucket.entries)
    out = dict(unpack_bucket(bucket))
    for name, t in tensors:
        assert out[name].dtype == t.dtype and out[name].shape == t.shape
        assert torch.equal(out[name], t)


def test_unpack_is_a_view_of_the_buffer() -> None:
    bucket = pack_bucket(0, [("w", torch.zeros(4))])
    ((_, view),) = unpack_bucket(bucket)
    bucket.buffer[:4] = np.frombuffer(np.float32(1.0).tobytes(), dtype=np.uint8)
    assert view[0].item() == 1.0  # no copy was made


def test_read_only_buffer_unpacks() -> None:
    bucket = pack_bucket(0, [("w", torch.arange(6, dtype=torch.float32))])
    bucket.buffer.setflags(write=False)  # as Ray hands it back
    ((_, view),) = unpack_bucket(bucket)
    assert view.tolist() == [0, 1, 2, 3, 4, 5]


def test_buckets_are_bounded() -> None:
    # 5 tensors of 64 floats = 256 bytes each; a 600-byte bound holds 2 per bucket
    tensors = [(f"t{i}", torch.zeros(64)) for i in range(5)]
    groups = list(split_into_buckets(tensors, max_bucket_bytes=600))
    assert [len(g) for g in groups] == [2, 2, 1]
    big = list(split_into_buckets([("big", torch.zeros(1000))], max_bucket_bytes=600))
    assert [len(g) for g in big] == [1]  # an oversized tensor travels alone

"""lit_gen.shards.in_index_order: the rows of sharded sampling put back in index order, a repeated sample kept
once."""

from __future__ import annotations

import pytest
import torch

from lit_gen.shards import in_index_order


def test_rows_of_each_sample_come_once_in_index_order():
    # 5 samples, 2 rows each (a text-to-image model keeping 2 candidates), over 2 ranks with batches of 2:
    # batches [0, 2], [4, 0] (0 repeated as padding), [1, 3], [4, 1] (4 drawn again: the first rows are kept)
    def batch(indices, tag):
        index = torch.tensor(indices).repeat_interleave(2)
        return {"index": index,
                "x": index[:, None].float() + torch.tensor([[0.0], [0.5]]).repeat(len(indices), 1),
                "labels": None, "captions": [f"{tag}{i}" for i in index.tolist()], "scores": -index.float()}

    rows = in_index_order([batch([0, 2], "a"), batch([4, 0], "b"), batch([1, 3], "c"), batch([4, 1], "d")], 5)
    assert rows["index"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    # a sample's rows keep their order
    assert rows["x"][:, 0].tolist() == [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5]
    # first batch's rows
    assert rows["captions"] == ["a0", "a0", "c1", "c1", "a2", "a2", "c3", "c3", "b4", "b4"]
    assert rows["labels"] is None and rows["scores"].tolist() == [-0.0, -0.0, -1, -1, -2, -2, -3, -3, -4, -4]
    with pytest.raises(RuntimeError, match="drew 4 of 5 samples"):
        in_index_order([batch([0, 2], "a"), batch([1, 3], "c")], 5)

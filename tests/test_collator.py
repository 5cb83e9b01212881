"""ContrastiveEmbCollator: shapes, masks and the GO->protein direction on a hand-checked
example; the positive cap; crops; use inside a DataLoader."""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import torch

from protgo.config import MiningConfig
from protgo.mining.collator import PAD, POSITIVE, ContrastiveEmbCollator, cap_positives


def item(pid: str, n: int, positives: dict[str, float], d: int = 3) -> dict:
    r = (np.arange(n * d, dtype=np.float16).reshape(n, d) + 1) * (1 if pid == "P0" else -1)
    return {"pid": pid, "residues": r, "positives": positives}


def test_hand_checked_batch():
    items = [item("P0", 2, {"GO:A": 1.0, "GO:B": 0.5}), item("P1", 4, {"GO:B": 1.0, "GO:Z": 1.0})]
    out = ContrastiveEmbCollator(MiningConfig(max_positives=4), zero=frozenset({"GO:Z"}))(items)
    assert out["pids"] == ["P0", "P1"]
    assert out["residues"].shape == (2, 4, 3) and out["residues"].dtype == torch.float16
    assert out["mask"].tolist() == [[True, True, False, False], [True, True, True, True]]
    assert out["lengths"].tolist() == [2, 4]
    assert torch.equal(out["residues"][0, :2].float(), torch.tensor([[1.0, 2, 3], [4, 5, 6]]))
    assert (out["residues"][0, 2:] == 0).all()
    assert torch.equal(out["residues"][1].float(), -torch.arange(1, 13.0).reshape(4, 3))
    # zero-shot GO:Z is masked out of the positives
    assert out["positives"] == [{"GO:A": 1.0, "GO:B": 0.5}, {"GO:B": 1.0}]
    assert out["pos_ids"] == [["GO:A", "GO:B"], ["GO:B"]]
    assert out["go_ids"] == ["GO:A", "GO:B"]
    # GO -> protein: A is P0's only, B is both proteins'
    assert out["go_pos"].tolist() == [[True, False], [True, True]]
    assert out["go_weight"].tolist() == [[1.0, 0.0], [0.5, 1.0]]
    assert out["cand_idx"].tolist() == [[0, 1, -1, -1], [1, -1, -1, -1]]
    assert out["cand_pos"].tolist() == [[True, True, False, False], [True, False, False, False]]
    assert out["cand_weight"].tolist() == [[1.0, 0.5, 0, 0], [1.0, 0, 0, 0]]
    assert out["cand_source"].tolist() == [
        [POSITIVE, POSITIVE, PAD, PAD],
        [POSITIVE, PAD, PAD, PAD],
    ]
    assert out["cand_valid"].equal(out["cand_pos"])


def test_positive_cap_prefers_specific_terms():
    rng = np.random.default_rng(0)
    pos = {f"GO:{i}": 1.0 for i in range(6)}
    spec = {f"GO:{i}": (20.0 if i == 3 else 0.0) for i in range(6)}.get
    picks = Counter()
    for _ in range(200):
        kept = cap_positives(pos, 2, rng, spec)
        assert len(kept) == 2 and len(set(kept)) == 2 and set(kept) <= set(pos)
        picks.update(kept)
    assert picks["GO:3"] > 190  # weight 21 of 26: nearly always kept
    assert cap_positives(pos, 10, rng) == sorted(pos)  # under the cap: all, in order
    out = ContrastiveEmbCollator(MiningConfig(max_positives=3), specificity=spec)(
        [item("P0", 2, pos)]
    )
    assert len(out["pos_ids"][0]) == 3 and out["cand_idx"].shape == (1, 3)
    assert len(out["positives"][0]) == 6  # the full set stays for the negative checks
    assert out["go_pos"].sum() == 6


def test_crop_to_max_residues():
    cfg = MiningConfig(max_residues=5)
    r = np.arange(40, dtype=np.float16).reshape(20, 2)
    coll = ContrastiveEmbCollator(cfg, seed=1, dtype=torch.float32)
    out = coll([{"pid": "P", "residues": r, "positives": {"G": 1}}])
    assert out["residues"].shape == (1, 5, 2) and out["residues"].dtype == torch.float32
    first = int(out["residues"][0, 0, 0]) // 2
    assert torch.equal(out["residues"][0], torch.from_numpy(r[first : first + 5].astype("f4")))


def test_works_in_a_dataloader():
    coll = ContrastiveEmbCollator(MiningConfig(max_positives=2))
    pickle.loads(pickle.dumps(coll))  # workers receive it pickled
    data = [item(f"P{i}", 1 + i, {f"GO:{i}": 1.0}) for i in range(5)]
    loader = torch.utils.data.DataLoader(data, batch_size=2, collate_fn=coll)
    shapes = [tuple(b["residues"].shape) for b in loader]
    assert shapes == [(2, 2, 3), (2, 4, 3), (1, 5, 3)]

"""Shared fixtures. Tests never touch the network (HF_HUB_OFFLINE is set here too)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_collection_modifyitems(items):
    """Tests that read the real Debian data (fixture ``real_data_dir``) carry the
    ``real_data`` marker: ``pytest -m "not real_data"`` runs the rest on a fresh clone."""
    for item in items:
        if "real_data_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_data)


@pytest.fixture
def tiny_obo() -> Path:
    return FIXTURES / "tiny.obo"


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The data directory that `scripts/setup.sh` fills. Missing data fails, never skips:
    CI runs the set-up first, so a missing directory is a real fault."""
    from protgo.config import default_data_dir

    root = default_data_dir()
    if not (root / "raw" / "debian" / "fetch.json").is_file():
        pytest.fail(f"real data missing in {root}: run `bash scripts/setup.sh` first")
    return root


@pytest.fixture(scope="session")
def tiny_esm(tmp_path_factory) -> Path:
    """A tiny random ESM-2-architecture model saved like a real checkpoint (same load path)."""
    import torch
    from transformers import EsmConfig, EsmForMaskedLM

    from protgo.encoders.esm_vocab import ESM2_VOCAB, make_esm2_tokenizer

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_esm")
    tok = make_esm2_tokenizer(d)
    cfg = EsmConfig(
        vocab_size=len(ESM2_VOCAB), hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=1026,
        position_embedding_type="rotary", pad_token_id=tok.pad_token_id,
        mask_token_id=tok.mask_token_id, token_dropout=True, emb_layer_norm_before=False,
    )  # fmt: skip
    EsmForMaskedLM(cfg).eval().save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory, tiny_esm):
    """(data_dir, overrides): the tiny training world of tests/train_world.py (dataset
    ``tiny``, its residue store and GO caches), built once per session."""
    from train_world import build_tiny_world

    data_dir = tmp_path_factory.mktemp("train_data")
    return data_dir, build_tiny_world(data_dir, tiny_esm)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_esm):
    """(checkpoint, data_dir, sequences): a 2-epoch run on dataset ``tinypred``, with per-term
    residuals (read it, never change it: test_predict.py and test_bad_inputs.py share it)."""
    from train_world import CONFIGS, build_predict_world

    from protgo.config import load_config
    from protgo.encoders.protein import ProteinEncoder
    from protgo.stores.go_encode import embed_go
    from protgo.stores.residues import ResidueStore
    from protgo.train.trainer import Trainer

    data_dir = tmp_path_factory.mktemp("predict_data")
    overrides, seqs = build_predict_world(data_dir, tiny_esm, "tinypred")
    more = ["phases.start_epochs=[0]", "train.epochs=2", f"train.out_dir={data_dir / 'run'}",
            "model.term_residual=true"]  # fmt: skip
    cfg = load_config(CONFIGS / "tiny.yaml", overrides + more)
    enc = ProteinEncoder(cfg.residues)
    ResidueStore.create(data_dir, enc.settings()).embed(enc, seqs, progress=False)
    embed_go("tinypred", 0, ["MF"], data_dir, cfg.go_text, progress=False)
    Trainer(cfg, progress=False).fit()
    return data_dir / "run" / "checkpoints" / "final.pt", data_dir, seqs

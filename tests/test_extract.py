"""protgo embed fasta: ESM extract.py layout, stitched long proteins, resume, safe loading."""

from __future__ import annotations

import json

import numpy as np
import torch
from typer.testing import CliRunner

from protgo.cli import app
from protgo.config import ResiduesConfig
from protgo.encoders.protein import ProteinEncoder
from protgo.errors import UserError


def test_embed_fasta_writes_esm_extract_files(tiny_esm, tmp_path):
    rng = np.random.default_rng(2)
    seqs = {"sp|P1|A": "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 90)), "Q2": "MKTAYIAK"}
    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(f">{k} some description\n{v}\n" for k, v in seqs.items()))
    out = tmp_path / "emb"
    args = ["embed", "fasta", str(fasta), str(out), "--model", str(tiny_esm), "--set",
            "residues.win_size=32", "--set", "residues.dtype=fp32"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["written"] == 2 and info["layer"] == 2
    ref = ProteinEncoder(ResiduesConfig(model=str(tiny_esm), win_size=32, dtype="fp32"))
    for label, seq in seqs.items():
        got = torch.load(out / f"{label.replace('/', '_')}.pt", weights_only=True)
        assert got["label"] == label
        want = ref.embed(seq)  # stitched windows: 90 residues through 32-residue windows
        rep = got["representations"][2]
        assert rep.dtype == torch.float32 and rep.shape == (len(seq), 32)
        torch.testing.assert_close(rep, want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got["mean_representations"][2], want.mean(0), atol=1e-5,
                                   rtol=1e-4)  # fmt: skip
    stamp = (out / "Q2.pt").stat().st_mtime_ns
    again = CliRunner().invoke(app, [*args, "--include", "mean"])
    assert again.exit_code == 0 and json.loads(again.stdout.splitlines()[-1])["skipped"] == 2
    assert (out / "Q2.pt").stat().st_mtime_ns == stamp
    other = CliRunner().invoke(app, [*args[:5], "unirep-64"])
    assert isinstance(other.exception, UserError) and "other model" in str(other.exception)
    bad = CliRunner().invoke(app, [*args, "--include", "bos"])
    assert isinstance(bad.exception, UserError) and "--include" in str(bad.exception)
    # ESM extract.py's spellings: --repr_layers, --toks_per_batch, --include mean per_tok
    for n, include in enumerate([["mean,per_tok"], ["mean", "per_tok"]]):
        esm = [*args[:3], str(tmp_path / f"esm{n}"), *args[4:], "--repr_layers", "1",
               "--toks_per_batch", "512", "--include", *include]  # fmt: skip
        res = CliRunner().invoke(app, esm)
        assert res.exit_code == 0, res.output
        got = torch.load(tmp_path / f"esm{n}" / "Q2.pt", weights_only=True)
        assert set(got["representations"]) == {1} and set(got["mean_representations"]) == {1}
    stray = CliRunner().invoke(app, [*args, "--include", "mean", "contacts"])
    assert isinstance(stray.exception, UserError) and "contacts" in str(stray.exception)

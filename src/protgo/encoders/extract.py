"""``protgo embed fasta``: per-protein embedding files in the layout of ESM's ``extract.py``.

``OUT_DIR/<label>.pt`` for each FASTA record (label: the header's first word, ``/`` replaced by
``_`` in the file name), a dict of CPU fp32 tensors as ESM writes it::

    {"label": str, "representations": {layer: (L, D)}, "mean_representations": {layer: (D,)}}

(``--include`` chooses ``per_tok`` and/or ``mean``.) Any length works: ESM models read long
proteins in stitched windows (one vector per residue), UniRep in one pass. The files hold only
tensors, strings and ints, so ``torch.load(path, weights_only=True)`` reads them without
running code. ``OUT_DIR/embed.json`` records the model settings: a rerun skips proteins whose
file exists (a killed run resumes) and refuses another model's settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from protgo.encoders.protein import embed_arrays
from protgo.encoders.registry import protein_encoder
from protgo.errors import UserError
from protgo.io import atomic_write, atomic_write_text, progress_bar

INCLUDE = ("mean", "per_tok")
CHUNK = 256  # proteins embedded (and held in memory) at a time


def file_name(label: str) -> str:
    return label.replace("/", "_") + ".pt"


def extract_fasta(fasta: Path, out_dir: Path, cfg, include: list[str], progress: bool = True):
    """Embed every record of ``fasta`` with the ``ResiduesConfig`` ``cfg`` into ``out_dir``;
    returns {"proteins", "written", "skipped", "layer", "dim"}."""

    from protgo.data.fasta import read_query_fasta

    bad = [i for i in include if i not in INCLUDE]
    if bad or not include:
        raise UserError(f"--include takes {' and/or '.join(INCLUDE)}, got {include}")
    seqs = read_query_fasta(fasta, by_accession=False)  # labels as ESM's extract.py names them
    enc = protein_encoder(cfg)
    settings = enc.settings()
    out_dir = Path(out_dir)
    meta = out_dir / "embed.json"
    if meta.is_file() and json.loads(meta.read_text())["settings"] != settings:
        raise UserError(f"{out_dir} holds embeddings of other model settings ({meta}): choose "
                        "another OUT_DIR or remove it")  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta, json.dumps({"settings": settings, "include": include}, indent=1))
    todo = [p for p in seqs if not (out_dir / file_name(p)).is_file()]
    layer = int(settings["layer"])
    bar = progress_bar(total=sum(len(seqs[p]) for p in todo), desc="embed fasta", unit="res",
                       unit_scale=True, disable=not progress)  # fmt: skip
    for lo in range(0, len(todo), CHUNK):
        pids = todo[lo : lo + CHUNK]
        arrays = embed_arrays(enc, [seqs[p] for p in pids], cfg.batch_tokens, bar)
        for pid, arr in zip(pids, arrays, strict=True):
            rep = torch.from_numpy(arr)
            obj: dict = {"label": pid}
            if "per_tok" in include:
                obj["representations"] = {layer: rep}
            if "mean" in include:
                obj["mean_representations"] = {layer: rep.mean(0)}
            atomic_write(out_dir / file_name(pid), lambda fh, obj=obj: torch.save(obj, fh))
    bar.close()
    return {"proteins": len(seqs), "written": len(todo), "skipped": len(seqs) - len(todo),
            "layer": layer, "dim": enc.dim}  # fmt: skip

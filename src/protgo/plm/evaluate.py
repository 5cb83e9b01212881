"""Held-out masked-token perplexity of a protein language model, next to the unigram
perplexity: at each pretraining checkpoint and for a saved model (``protgo plm evaluate``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from protgo.encoders.protein import resolve_model_dir
from protgo.errors import UserError
from protgo.plm import corpus as mc
from protgo.plm.config import PlmConfig


@torch.no_grad()
def evaluate_mlm(
    model,
    held: mc.TokenCorpus,
    unigram: np.ndarray,
    max_len: int,
    n_seqs: int,
    batch_tokens: int = 8192,
    mask_prob: float = 0.15,
) -> dict:
    """Masked-token perplexity on held-out sequences next to the unigram perplexity.

    Crops and masks come from a fixed seed, so figures from different steps compare. Every
    chosen residue becomes <mask> (no 80/10/10 at evaluation).
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(1234)
    device = next(model.parameters()).device
    log_uni = torch.from_numpy(np.log(np.maximum(unigram, 1e-12)))
    n = min(n_seqs, len(held))
    order = np.arange(n)
    nll = nll_uni = count = 0.0
    pos = 0
    while pos < n:
        ids, pos = mc.next_batch_ids(held, order, pos, max_len, batch_tokens)
        tokens = mc.pad_batch([mc.crop_and_wrap(held.residues(i), max_len, gen) for i in ids])
        inputs, labels = mc.mask_tokens(tokens, gen, mask_prob, eval_mode=True)
        attn = (tokens != mc.PAD).long()
        logits = model(input_ids=inputs.to(device), attention_mask=attn.to(device)).logits
        target = labels != -100  # (B, L)
        logp = torch.log_softmax(logits.float().cpu(), dim=-1)[target]  # (T, V)
        nll += float(-logp.gather(1, labels[target][:, None]).sum())
        nll_uni += float(-log_uni[labels[target]].sum())
        count += int(target.sum())
    model.train(was_training)
    count = max(count, 1)
    return {
        "heldout_ppl": math.exp(nll / count),
        "unigram_ppl": math.exp(nll_uni / count),
        "eval_tokens": int(count),
        "eval_sequences": int(n),
    }


def evaluate_model_dir(
    model_dir: Path, fasta: Path | None = None, n_seqs: int = 1000, threads: int | None = 2
) -> dict:
    """Held-out perplexity of a saved model next to the unigram perplexity.

    Without ``fasta`` the held-out split is rebuilt from the training config the export
    carries (training.json), with the unigram from the training split; with ``fasta`` all its
    sequences are scored, against their own unigram (a slightly optimistic baseline).
    """
    from transformers import EsmForMaskedLM

    model_dir = resolve_model_dir(str(model_dir))
    if threads:
        torch.set_num_threads(threads)
    model = EsmForMaskedLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    info_path = model_dir / "training.json"
    if fasta is not None:
        records = list(mc.iter_fasta(fasta))
        held = mc.TokenCorpus.from_records(records)
        unigram, max_len = held.unigram(), 1024
    elif info_path.is_file():
        cfg = PlmConfig.model_validate(json.loads(info_path.read_text())["config"])
        corpus = mc.load_corpus(cfg.data)
        held, unigram, max_len = corpus.heldout, corpus.train.unigram(), cfg.model.max_len
    else:
        raise UserError(f"{model_dir} has no training.json; pass --fasta with sequences to score")
    return evaluate_mlm(model, held, unigram, max_len, n_seqs)

"""The masked-LM corpus: sequences as one token array, exclusion, hold-out, crops and masks.

Sequences are encoded once into a flat ``uint8`` array of ESM-2 token ids with offsets
(nanoGPT-style), so a 516k-sequence corpus costs ~200 MB and batches are cheap slices.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from protgo.config import resolve_data_dir
from protgo.data.fasta import iter_fasta
from protgo.encoders.esm_vocab import ESM2_VOCAB
from protgo.errors import UserError
from protgo.plm.config import PlmDataConfig

CLS, PAD, EOS, UNK = 0, 1, 2, 3
MASK = ESM2_VOCAB.index("<mask>")
# The 20 standard amino acids (ids 4..23): random replacements are drawn from these.
AA_LOW, AA_HIGH = 4, 24


def _byte_table() -> np.ndarray:
    """Byte -> ESM-2 id for one-letter residues; anything else maps to <unk>."""
    table = np.full(256, UNK, dtype=np.uint8)
    for idx, tok in enumerate(ESM2_VOCAB):
        if len(tok) == 1 and tok.isalpha():
            table[ord(tok)] = idx
            table[ord(tok.lower())] = idx
    return table


BYTE_TABLE = _byte_table()


def resolve_fasta(name: str, data_dir: Path) -> Path:
    """A dataset name (``datasets/<name>/proteins.fasta``), a dataset folder or a FASTA file."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.is_dir() and (path / "proteins.fasta").is_file():
        return path / "proteins.fasta"
    candidate = data_dir / "datasets" / name / "proteins.fasta"
    if candidate.is_file():
        return candidate
    raise UserError(
        f"sequence source '{name}' not found (looked for a FASTA file, a folder with "
        f"proteins.fasta, and {candidate}); build it with `protgo data build` or give a path"
    )


def read_id_file(path: Path) -> set[str]:
    """Ids to exclude, one per line (first word; '#' starts a comment)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--exclude-ids file {path} not found (one protein id per line)")
    ids = set()
    for line in path.read_text().splitlines():
        word = line.split("#", 1)[0].strip()
        if word:
            ids.add(word.split()[0].lstrip(">"))
    return ids


def _id_keys(pid: str) -> set[str]:
    """An id and, for 'sp|P12345|NAME' style ids, its parts, so either spelling matches."""
    return {pid, *(p for p in pid.split("|") if p)}


@dataclass
class Exclusion:
    ids: set[str]
    sequences: set[str]

    @classmethod
    def build(cls, fastas: Iterable[Path], extra_ids: set[str]) -> Exclusion:
        ids, seqs = set(extra_ids), set()
        for path in fastas:
            for pid, seq in iter_fasta(path):
                ids |= _id_keys(pid)
                seqs.add(seq.upper())
        return cls(ids, seqs)

    def excludes(self, pid: str, seq: str) -> bool:
        # By sequence too: the same human protein may sit under another accession.
        return bool(_id_keys(pid) & self.ids) or seq.upper() in self.sequences


def holdout_score(pid: str, salt: str = "") -> float:
    """A stable pseudo-random number in [0, 1) per id, so the hold-out never depends on order
    (``salt`` draws an independent number, e.g. for sampling the training split)."""
    return int(hashlib.md5((salt + pid).encode()).hexdigest()[:12], 16) / 16**12


@dataclass
class TokenCorpus:
    """Sequences as one flat array of residue token ids (no CLS/EOS) plus offsets."""

    ids: list[str]
    tokens: np.ndarray  # (total residues,) uint8
    offsets: np.ndarray  # (N + 1,) int64

    @classmethod
    def from_records(cls, records: list[tuple[str, str]]) -> TokenCorpus:
        lengths = np.fromiter((len(s) for _, s in records), dtype=np.int64, count=len(records))
        offsets = np.zeros(len(records) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        raw = np.frombuffer("".join(s for _, s in records).encode("ascii", "replace"), np.uint8)
        return cls([p for p, _ in records], BYTE_TABLE[raw], offsets)

    def __len__(self) -> int:
        return len(self.ids)

    def length(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])

    def residues(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def unigram(self) -> np.ndarray:
        """Residue frequencies over the vocabulary (add-one smoothed over residue tokens)."""
        counts = np.bincount(self.tokens, minlength=len(ESM2_VOCAB)).astype(np.float64)
        counts[AA_LOW:MASK] += 1.0  # residue-like tokens only; specials stay at zero
        return counts / counts.sum()


def split_corpus(
    fasta: Path,
    exclusion: Exclusion,
    holdout_frac: float,
    holdout_min: int,
    train_frac: float = 1.0,
) -> tuple[TokenCorpus, TokenCorpus, int]:
    """(train, held-out, n_excluded). The hold-out is the ids with the smallest hash scores:
    ``max(holdout_frac * N, min(holdout_min, N // 5))`` of them, fixed for a given corpus.
    ``train_frac`` < 1 keeps that share of the rest for training, chosen by a second hash of
    the id (so the same sample on any machine; the hold-out does not change)."""
    kept, n_excluded = [], 0
    for pid, seq in iter_fasta(fasta):
        if exclusion.excludes(pid, seq):
            n_excluded += 1
        else:
            kept.append((pid, seq))
    if len(kept) < 2:
        raise UserError(f"corpus {fasta} has {len(kept)} sequences left after exclusion")
    n_hold = max(math.ceil(holdout_frac * len(kept)), min(holdout_min, len(kept) // 5), 1)
    order = sorted(range(len(kept)), key=lambda i: holdout_score(kept[i][0]))
    hold = set(order[:n_hold])
    train = [
        r
        for i, r in enumerate(kept)
        if i not in hold and (train_frac >= 1.0 or holdout_score(r[0], "train:") < train_frac)
    ]
    held = [kept[i] for i in sorted(hold)]
    return TokenCorpus.from_records(train), TokenCorpus.from_records(held), n_excluded


def crop_and_wrap(residues: np.ndarray, max_len: int, gen: torch.Generator) -> torch.Tensor:
    """A random window of at most ``max_len - 2`` residues with <cls> ... <eos> around it."""
    room = max_len - 2
    start = 0
    if len(residues) > room:
        start = int(torch.randint(len(residues) - room + 1, (1,), generator=gen))
    window = torch.from_numpy(residues[start : start + room].astype(np.int64))
    return torch.cat([torch.tensor([CLS]), window, torch.tensor([EOS])])


def pad_batch(seqs: list[torch.Tensor]) -> torch.Tensor:
    """(B, L) token ids padded with <pad>."""
    out = torch.full((len(seqs), max(len(s) for s in seqs)), PAD, dtype=torch.long)
    for row, s in enumerate(seqs):
        out[row, : len(s)] = s
    return out


def mask_tokens(
    tokens: torch.Tensor, gen: torch.Generator, prob: float = 0.15, eval_mode: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """ESM-2 masking of (B, L) ids -> (inputs, labels); labels are -100 where not predicted.

    Training: of the chosen ``prob`` share of residues, 80% become <mask>, 10% a random amino
    acid, 10% stay. ``eval_mode``: all chosen become <mask> (a clean perplexity measure).
    """
    residue = tokens >= AA_LOW  # specials (cls/pad/eos/unk are < 4) are never targets
    chosen = (torch.rand(tokens.shape, generator=gen) < prob) & residue
    labels = torch.where(chosen, tokens, torch.full_like(tokens, -100))
    inputs = tokens.clone()
    if eval_mode:
        inputs[chosen] = MASK
        return inputs, labels
    roll = torch.rand(tokens.shape, generator=gen)
    inputs[chosen & (roll < 0.8)] = MASK
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    randoms = torch.randint(AA_LOW, AA_HIGH, tokens.shape, generator=gen)
    inputs[swap] = randoms[swap]
    return inputs, labels


def next_batch_ids(corpus: TokenCorpus, order: np.ndarray, pos: int, max_len: int, budget: int):
    """Sequence indices for one token-budget batch starting at ``order[pos]``, and the new pos.

    Adds sequences while (n + 1) * longest-cropped-length stays within ``budget`` (always at
    least one), so batches of short proteins hold more of them.
    """
    picked: list[int] = []
    longest = 0
    while pos < len(order):
        i = int(order[pos])
        longest_if = max(longest, min(corpus.length(i) + 2, max_len))
        if picked and (len(picked) + 1) * longest_if > budget:
            break
        picked.append(i)
        longest = longest_if
        pos += 1
    return picked, pos


@dataclass
class Corpus:
    train: TokenCorpus
    heldout: TokenCorpus
    n_excluded: int
    source: str
    excluded_from: list[str]


def load_corpus(cfg: PlmDataConfig, exclude_ids: Path | None = None) -> Corpus:
    """Corpus minus the excluded datasets (by id and sequence) and ids, split train/held-out."""
    data_dir = resolve_data_dir(cfg.data_dir)
    fasta = resolve_fasta(cfg.corpus, data_dir)
    excl_fastas = [resolve_fasta(name, data_dir) for name in cfg.exclude_datasets]
    extra = read_id_file(exclude_ids) if exclude_ids else set()
    exclusion = Exclusion.build(excl_fastas, extra)
    train, held, n_ex = split_corpus(
        fasta, exclusion, cfg.holdout_frac, cfg.holdout_min, cfg.train_sample_frac
    )
    sources = [_shown(p, data_dir) for p in excl_fastas]
    sources += [str(exclude_ids)] if exclude_ids else []
    return Corpus(train, held, n_ex, _shown(fasta, data_dir), sources)


def _shown(path: Path, data_dir: Path) -> str:
    """A path as the model card shows it: relative to the data directory where it lies there
    (``<data>/datasets/swissprot-2014/proteins.fasta``), so cards do not carry home folders."""
    try:
        return f"<data>/{Path(path).resolve().relative_to(data_dir.resolve())}"
    except ValueError:
        return str(path)

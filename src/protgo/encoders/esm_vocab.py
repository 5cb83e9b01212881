"""The ESM-2 vocabulary, so a tokenizer can be made offline for models protgo trains itself.

The token order is ESM-2's own (facebook/esm2_*): a model trained with this tokenizer loads
wherever ESM-2 loads, and an ESM-2 checkpoint's tokenizer gives the same ids.
"""

from __future__ import annotations

from pathlib import Path

ESM2_VOCAB = [
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "D", "I", "P", "K", "Q", "N", "F", "Y", "M",
    "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
]  # fmt: skip


def make_esm2_tokenizer(directory: Path):
    """Write ESM-2's ``vocab.txt`` into ``directory`` and return an ``EsmTokenizer`` for it."""
    from transformers import EsmTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(ESM2_VOCAB) + "\n")
    return EsmTokenizer(vocab_file=str(vocab))

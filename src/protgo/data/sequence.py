"""Protein sequences as protgo reads them: the residue alphabet, cleaning and the content key.
Torch-free, so building a dataset never loads a model.

Residues (:func:`clean_sequence`), as ESM-2 was trained on UniRef:

* the 20 standard amino acids and ``X`` (unknown), ``B`` (D/N), ``Z`` (E/Q), ``U``
  (selenocysteine) and ``O`` (pyrrolysine) are tokens of ESM-2's vocabulary and kept as is;
* lowercase letters (soft-masked regions in some FASTA files) are upper-cased;
* trailing ``*`` (a translated stop codon) is stripped; a ``*`` inside a sequence is an error
  (a read-through stop means the sequence is not one protein);
* anything else (``J``, digits, ``-``, ``.``, spaces, an empty sequence) is an error naming the
  protein and the 1-based position.
"""

from __future__ import annotations

import hashlib

from protgo.errors import UserError

ESM_RESIDUES = frozenset("LAGVSERTDIPKQNFYMHWCXBUZO")


def clean_sequence(pid: str, seq: str) -> str:
    """Upper-case, strip trailing stops, and check every residue (see the module docstring)."""
    clean = seq.upper().rstrip("*")
    if not clean:
        raise UserError(f"protein '{pid}': empty sequence (nothing to embed); remove the record")
    for i, ch in enumerate(clean):
        if ch not in ESM_RESIDUES:
            hint = "a stop codon inside the sequence" if ch == "*" else f"{ch!r} is not a residue"
            raise UserError(
                f"protein '{pid}', position {i + 1}: {hint}; ESM accepts the 20 amino acids "
                "and X B Z U O (lowercase allowed, trailing '*' stripped): fix or drop the record"
            )
    return clean


def sequence_hash(clean: str) -> str:
    """Key of a cleaned sequence in the residue store (32 hex digits)."""
    return hashlib.blake2b(clean.encode("ascii"), digest_size=16).hexdigest()

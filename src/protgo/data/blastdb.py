"""Read NCBI BLAST protein databases (format version 4: ``.pin``, ``.phr``, ``.psq``) directly.

The metastudent data ships Swiss-Prot 2014 as BLAST databases; reading them here avoids a
dependency on ``blastdbcmd``. Layout, per the BLAST db v4 spec:

* ``.pin``: version, type, title, timestamp, number of sequences N, total residues (int64 LE),
  max length, then N+1 header offsets and N+1 sequence offsets (int32 big-endian).
* ``.phr``: one ASN.1 BER ``Blast-def-line-set`` per sequence; its first title string is the
  FASTA-like header (here ``ACCESSION|GO:...``).
* ``.psq``: residues as NCBIstdaa codes, one byte each, sequences separated by a NUL byte.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from protgo.errors import UserError

NCBISTDAA = "-ABCDEFGHIKLMNPQRSTVWXYZU*OJ"
_DECODE = bytes(ord(c) for c in NCBISTDAA).ljust(256, b"X")


class BlastDb:
    def __init__(self, prefix: Path):
        self.prefix = Path(prefix)
        pin = self._path(".pin").read_bytes()
        version, dbtype = struct.unpack(">ii", pin[:8])
        if version != 4 or dbtype != 1:
            raise UserError(f"{self.prefix}.pin: expected a v4 protein BLAST db, got v{version}")
        pos = 8
        for _ in range(2):  # title, timestamp
            (n,) = struct.unpack(">i", pin[pos : pos + 4])
            pos += 4 + n
        (self.n,) = struct.unpack(">i", pin[pos : pos + 4])
        pos += 4 + 8 + 4  # total residues (int64 LE), max length
        self.hdr_off = np.frombuffer(pin, ">i4", self.n + 1, pos).astype(np.int64)
        self.seq_off = np.frombuffer(pin, ">i4", self.n + 1, pos + 4 * (self.n + 1)).astype(
            np.int64
        )
        self.phr = np.memmap(self._path(".phr"), np.uint8, "r")
        self.psq = np.memmap(self._path(".psq"), np.uint8, "r")

    def _path(self, suffix: str) -> Path:
        p = self.prefix.with_name(self.prefix.name + suffix)
        if not p.is_file():
            raise UserError(f"BLAST db file {p} missing (run `protgo data fetch`)")
        return p

    def title(self, i: int) -> str:
        blob = bytes(self.phr[self.hdr_off[i] : self.hdr_off[i + 1]])
        pos = blob.find(b"\xa0\x80\x1a")  # [0] title, VisibleString
        if pos < 0:
            raise UserError(f"{self.prefix}.phr: header {i} has no title")
        pos += 3
        length = blob[pos]
        pos += 1
        if length & 0x80:  # long-form BER length
            nbytes = length & 0x7F
            length = int.from_bytes(blob[pos : pos + nbytes], "big")
            pos += nbytes
        return blob[pos : pos + length].decode("ascii")

    def sequence(self, i: int) -> str:
        # seq_off[i+1] - 1 drops the NUL separator that ends each sequence.
        raw = bytes(self.psq[self.seq_off[i] : self.seq_off[i + 1] - 1])
        return raw.translate(_DECODE).decode("ascii")

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(title, sequence) for every entry."""
        for i in range(self.n):
            yield self.title(i), self.sequence(i)

"""What the integrity checks cost: checksums, locks and the ontology cycle check.

Prints, on files of real sizes:

* a residue-store shard (``--shard-mb``, 256 MB by default, as ``residues.shard_mb``): the
  first read with its checksum against a size-only check (what ``predict`` did before), and
  a second read in the same process (verified once per process: a stat only);
* the GO vector cache of all of GO (43,558 x 384 fp32): ``GoVectorCache.load`` with its
  checksums against a bare ``np.load``;
* a shard lock taken and released (per shard written by ``embed residues``);
* ``Ontology`` construction on the real GO with and without the cycle check (needs
  ``protgo data build --name human-exp``; skipped without it);
* loading a dataset (``DatasetFolder``: its annotations, splits, sequences and ontology) with
  each file checked against ``dataset.json`` against the same reads unchecked (human-exp, and
  swissprot-2014 when built);
* a checkpoint of the default config's size (the aligner and its AdamW state, about 190 MB
  with per-term residuals): ``torch.load`` against the zip CRC check added before it.

    python benchmarks/integrity.py [--shard-mb 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from protgo.config import default_data_dir
from protgo.data.ontology import Ontology, parse_obo
from protgo.io import file_lock, file_sha256
from protgo.stores import residues
from protgo.stores.go_vectors import GoVectorCache
from protgo.stores.shards import check_shard, shard_paths


def best_of(repeats: int, fn) -> float:
    """Best wall time of ``repeats`` calls; with ``--cpu-time``, process CPU time instead
    (steadier on a machine shared with other jobs)."""
    clock = time.process_time if CPU_TIME else time.perf_counter
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return min(times)


CPU_TIME = False


def shard_figures(work: Path, mb: int, repeats: int) -> None:
    dim = 320
    rows = (mb << 20) // (2 * dim)
    (work / "shards").mkdir()
    vec_path, mean_path, _ = shard_paths(work, "s")
    np.save(vec_path, np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float16))
    np.save(mean_path, np.zeros((100, dim), np.float32))
    info = {"rows": rows, "n": 100, "sha256": file_sha256(vec_path),
            "mean_sha256": file_sha256(mean_path)}  # fmt: skip
    size = best_of(repeats, lambda: check_shard(work, "s", info, dim, deep=False))
    deep = best_of(repeats, lambda: check_shard(work, "s", info, dim, deep=True))
    residues._VERIFIED.clear()
    t0 = time.perf_counter()
    residues._verified_once(work, "s", info, dim, dim)
    first = time.perf_counter() - t0
    again = best_of(repeats, lambda: residues._verified_once(work, "s", info, dim, dim))
    print(f"shard {mb} MB: size-only check {size * 1e3:.2f} ms; with checksum {deep:.3f} s "
          f"({mb / deep:.0f} MB/s); first read in a process {first:.3f} s, later reads "
          f"{again * 1e3:.3f} ms")  # fmt: skip
    lock = work / "shards" / "s.lock"

    def take():
        with file_lock(lock, blocking=False):
            pass

    per = best_of(repeats, lambda: [take() for _ in range(1000)]) / 1000
    print(f"shard lock: {per * 1e6:.1f} us to take and release")


def go_cache_figures(work: Path, repeats: int) -> None:
    n, dim = 43_558, 384
    vecs = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    ids = [f"GO:{i:07d}" for i in range(n)]
    GoVectorCache(ids, ["MF"] * n, vecs, {}).save(work / "go")
    bare = best_of(repeats, lambda: np.load(work / "go" / "vectors.npy"))
    checked = best_of(repeats, lambda: GoVectorCache.load(work / "go"))
    print(f"GO vector cache ({n} x {dim} fp32, {vecs.nbytes / 2**20:.0f} MB): np.load "
          f"{bare:.3f} s; GoVectorCache.load with checksums {checked:.3f} s")  # fmt: skip


def ontology_figures(repeats: int) -> None:
    obo = default_data_dir() / "datasets" / "human-exp" / "go.obo"
    if not obo.is_file():
        print(f"ontology: skipped ({obo} missing; run `protgo data build --name human-exp`)")
        return
    terms = parse_obo(obo)
    onto = Ontology(terms)
    build = best_of(repeats, lambda: Ontology(terms))
    cycle = best_of(repeats, onto.find_cycle)
    print(f"ontology ({len(onto)} terms): construction {build:.3f} s, of which the cycle check "
          f"{cycle:.3f} s ({100 * cycle / build:.0f}%)")  # fmt: skip


def dataset_figures(repeats: int) -> None:
    from protgo.data.folder import DATA_FILES, DatasetFolder

    for name in ("human-exp", "swissprot-2014"):
        root = default_data_dir() / "datasets" / name
        if not (root / "dataset.json").is_file():
            print(f"dataset {name}: skipped (not built)")
            continue

        def load(checked: bool, root: Path = root):
            folder = DatasetFolder(root)
            if not checked:
                folder._checked = set(DATA_FILES)  # as if verified already
            return folder.annotations, folder.splits, folder.sequences, folder.ontology

        plain = best_of(repeats, lambda: load(False))
        checked = best_of(repeats, lambda: load(True))
        mb = sum((root / f).stat().st_size for f in DATA_FILES) / 2**20
        print(f"dataset {name} ({mb:.0f} MB of files): load {plain:.2f} s unchecked, "
              f"{checked:.2f} s with checksums (+{checked - plain:.2f} s)")  # fmt: skip


def checkpoint_figures(work: Path, repeats: int) -> None:
    import torch

    from protgo.model.checkpoints import check_zip_members

    rng = torch.Generator().manual_seed(0)
    state = {"model": {f"w{i}": torch.randn(2048, 768, generator=rng) for i in range(10)}}
    path = work / "ckpt.pt"
    torch.save(state, path)
    mb = path.stat().st_size / 2**20
    load = best_of(repeats, lambda: torch.load(path, weights_only=True))
    crc = best_of(repeats, lambda: check_zip_members(path, "checkpoint"))
    print(f"checkpoint ({mb:.0f} MB): torch.load {load:.3f} s; zip CRC check {crc:.3f} s "
          f"before it")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shard-mb", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cpu-time", action="store_true", help="time by process CPU, not wall")
    args = p.parse_args()
    global CPU_TIME
    CPU_TIME = args.cpu_time
    with tempfile.TemporaryDirectory() as tmp:
        shard_figures(Path(tmp), args.shard_mb, args.repeats)
        go_cache_figures(Path(tmp), args.repeats)
        checkpoint_figures(Path(tmp), args.repeats)
    ontology_figures(args.repeats)
    dataset_figures(args.repeats)


if __name__ == "__main__":
    main()

"""Encoding GO texts into GO vector caches (:mod:`protgo.stores.go_vectors`).

:func:`load_or_build` re-encodes only when a cache's manifest differs (encoder identity,
phase, the texts' hash), and then only the texts no other cache of the same encoder holds (a
text key is the hash of its token ids, so equal keys mean equal vectors: 65% of GO's texts
are the same in phases 1 and 2) or the donors given (a bundle's shipped vectors).
:func:`embed_go` encodes a dataset's ontology, :func:`encode_ontology` any ontology.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from protgo.config import GoTextConfig
from protgo.data.folder import DatasetFolder
from protgo.encoders.text import load_text_encoder
from protgo.encoders.text_top import LowerStates, TextTop, lower_states
from protgo.errors import UserError
from protgo.stores.go_text import GoTextStore
from protgo.stores.go_vectors import MANIFEST_VERSION, GoVectorCache, cache_dir

log = logging.getLogger(__name__)


def text_key(input_ids: Sequence[int]) -> str:
    """A term's text as the encoder sees it (its token ids), hashed: equal keys under the same
    encoder give the same vector, whatever the phase."""
    return hashlib.blake2b(np.asarray(input_ids, np.int64).tobytes(), digest_size=8).hexdigest()


def _donor_vectors(directory: Path, manifest: dict) -> dict[str, np.ndarray]:
    """text key -> vector from the other complete caches of this encoder under the same
    ``stores/go`` (other phases or aspects, other datasets and bundles: a text key is the
    text's token ids, so equal keys mean equal vectors wherever they were encoded) whose
    encoder is this one but for the added relation tokens (which change the ids of the texts
    that use them, and nothing else)."""

    def base(identity: dict) -> dict:
        return {k: v for k, v in identity.items() if k != "added_tokens"}

    found: dict[str, np.ndarray] = {}
    directory = Path(directory)
    for other in sorted(directory.parents[2].glob(f"*/{directory.parent.name}/*")):
        path = other / "manifest.json"
        if other == Path(directory) or not path.is_file():
            continue
        try:
            old = json.loads(path.read_text())
            if base(old.get("encoder", {})) != base(manifest["encoder"]) or "text_top" in old:
                continue  # another encoder, or vectors of tuned text layers
            cache = GoVectorCache.load(other)
        except (json.JSONDecodeError, UserError):
            continue  # unreadable or damaged: nothing to reuse from it
        found.update((k, v) for k, v in zip(cache.text_keys, cache.vectors, strict=True) if k)
    return found


def encode_missing(
    store, encoder, directory: Path, manifest: dict, batch_size, progress, reuse: bool = True,
    extra: GoVectorCache | None = None,
):  # fmt: skip
    """(N, D) vectors of ``store``'s texts: those another cache of this encoder holds (or
    ``extra``, e.g. a bundle's shipped vectors) are copied (unless not ``reuse``), the others
    encoded. ``manifest["reused"]`` says how many were copied."""
    keys = [text_key(x) for x in store.tokenized.input_ids]
    donors = _donor_vectors(directory, manifest) if reuse else {}
    if reuse and extra is not None:
        donors.update((k, v) for k, v in zip(extra.text_keys, extra.vectors, strict=True) if k)
    todo = [i for i, k in enumerate(keys) if k not in donors]
    vectors = np.zeros((len(keys), encoder.dim), dtype=np.float32)
    if todo:
        ids = store.tokenized.input_ids
        vectors[todo] = encoder.encode_ids([ids[i] for i in todo], batch_size, progress)
    for i, k in enumerate(keys):
        if k in donors:
            vectors[i] = donors[k]
    manifest["reused"] = len(keys) - len(todo)
    return vectors, keys


def cache_manifest(store, encoder) -> dict:
    """What the vectors depend on: the encoder's identity and the texts' hash (not the phase
    number: phases of other configs with the same texts share the cache)."""
    return {
        "version": MANIFEST_VERSION,
        "encoder": encoder.identity(),
        "text_hash": store.text_hash(),
        "aspects": sorted(set(store.aspects())),
    }


def _stale_reason(directory: Path, manifest: dict) -> str | None:
    """None when the cache on disk matches ``manifest``; else what changed."""
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        return "no cache yet"
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        return "unreadable manifest"
    changed = [k for k in manifest if old.get(k) != manifest[k]]
    return f"changed: {', '.join(changed)}" if changed else None


def load_or_build(
    store, encoder, directory: Path, batch_size: int = 64, force: bool = False,
    progress: bool = True, donors: GoVectorCache | None = None,
) -> GoVectorCache:  # fmt: skip
    """The cache for ``store``'s current phase: loaded when unchanged, else encoded and saved.

    ``store`` must have been through ``update_phase_and_tokenize(phase, encoder)``.
    ``force`` encodes every text anyway, copying nothing from other phases; ``donors``: more
    vectors to copy from by text key (:func:`encode_missing`).
    """
    if store.tokenized is None:
        store.update_phase_and_tokenize(store.phase if store.phase is not None else 0, encoder)
    manifest = cache_manifest(store, encoder)
    reason = "forced" if force else _stale_reason(directory, manifest)
    if reason is None:
        try:
            cache = GoVectorCache.load(directory)
        except UserError as err:  # damaged on disk: encode it again
            log.warning("%s; encoding it again", err)
            reason = "damaged"
        else:
            if cache.ids == store.ids:
                log.info("GO vector cache hit: %s", directory)
                return cache
            reason = "ids differ"
    vectors, keys = encode_missing(
        store, encoder, directory, manifest, batch_size, progress, not force, donors
    )
    log.info(
        "encoded %d GO texts (phase %s) into %s (%s); %d more copied from other phases",
        len(store.ids) - manifest["reused"], store.phase, directory, reason, manifest["reused"],
    )  # fmt: skip
    manifest["n_truncated"] = store.tokenized.n_truncated
    cache = GoVectorCache(store.ids, store.aspects(), vectors, manifest, keys)
    cache.save(directory)
    return cache


def embed_go(
    dataset: str, phase: int, aspects: Iterable[str], data_dir: Path, cfg: GoTextConfig,
    force: bool = False, progress: bool = True,
) -> tuple[GoVectorCache, Path]:  # fmt: skip
    """Encode (or find cached) the GO texts of a dataset's ontology for one phase."""
    aspects = list(aspects)
    ontology = DatasetFolder.load(dataset, data_dir).ontology
    empty = [a for a in aspects if not ontology.ids(a)]
    if empty:
        raise UserError(
            f"the ontology of dataset '{Path(dataset).name}' has no {', '.join(empty)} terms "
            f"(it holds {', '.join(a for a in ('BP', 'MF', 'CC') if ontology.ids(a))}): leave "
            f"{', '.join(empty)} out of the aspects"
        )
    directory = cache_dir(data_dir, Path(dataset).name, cfg, phase, aspects)
    cache, _ = encode_ontology(ontology, phase, aspects, cfg, directory, force, progress)
    return cache, directory


def encode_ontology(
    ontology, phase: int, aspects: Iterable[str], cfg: GoTextConfig, directory: Path,
    force: bool = False, progress: bool = True, donors: GoVectorCache | None = None,
) -> tuple[GoVectorCache, GoTextStore]:  # fmt: skip
    """The GO vector cache of ``ontology``'s terms of ``aspects`` at ``phase`` in
    ``directory`` (:func:`cache_dir`), and the text store behind it; ``donors``: vectors to
    copy from where a text is the same (:func:`encode_missing`)."""
    encoder, store = phase_texts(ontology, phase, aspects, cfg)
    cache = load_or_build(store, encoder, directory, cfg.batch_size, force, progress, donors)
    return cache, store


def phase_texts(ontology, phase: int, aspects: Iterable[str], cfg: GoTextConfig):
    """The text encoder of ``cfg`` and the texts of ``ontology``'s terms of ``aspects`` at
    ``phase``, tokenised by it (its relation tokens added)."""
    encoder = load_text_encoder(
        cfg.encoder, cfg.max_length, cfg.quantize_int8, cfg.device, cfg.dtype
    )
    store = GoTextStore(ontology, cfg, aspects=list(aspects))
    store.update_phase_and_tokenize(phase, encoder)
    return encoder, store


def tuned_lower_states(ontology, phase: int, aspects, cfg: GoTextConfig, ids, progress=True):
    """(the encoder, the token states entering its ``cfg.tune_layers`` tuned layers) for every
    text of ``phase``, rows as ``ids`` (the phase's vector cache)."""
    encoder, store = phase_texts(ontology, phase, aspects, cfg)
    if store.ids != list(ids):
        raise ValueError("the phase's texts and its vector cache hold other GO ids")
    ids = store.tokenized.input_ids
    return encoder, lower_states(encoder, ids, cfg.tune_layers, cfg.batch_size, progress)


def weights_hash(weights: dict) -> str:
    """A short hash of a state dict (names and values): what names tuned text layers."""
    h = hashlib.blake2b(digest_size=8)
    for name, value in weights.items():
        h.update(name.encode())
        h.update(value.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def tuned_cache(frozen: GoVectorCache, lower: LowerStates, top: TextTop, batch_size: int = 64):
    """``frozen`` (the frozen encoder's cache of the same texts) with every vector re-encoded
    by the tuned layers ``top``; the manifest names them by :func:`weights_hash`."""
    vectors = top.encode(lower, batch_size)
    manifest = frozen.manifest | {"text_top": weights_hash(top.state_dict())}
    return GoVectorCache(frozen.ids, frozen.aspects, vectors, manifest, frozen.text_keys)


def tuned_text_cache(
    ontology, phase: int, cfg: GoTextConfig, frozen: GoVectorCache, weights: dict,
    directory: Path,
) -> GoVectorCache:  # fmt: skip
    """The vectors of a checkpoint trained with ``go_text.tune_layers``: ``frozen``'s texts
    (of its aspects) re-encoded by the tuned layers with ``weights``, cached in
    ``<directory>-tuned-<weights hash>`` (``directory``: the frozen cache's folder)."""
    name = weights_hash(weights)
    where = Path(f"{directory}-tuned-{name}")
    want = frozen.manifest | {"text_top": name}
    if _stale_reason(where, want) is None:
        try:
            cache = GoVectorCache.load(where)
        except UserError as err:  # damaged on disk: encode it again
            log.warning("%s; encoding it again", err)
        else:
            if cache.ids == frozen.ids:
                return cache
    aspects = sorted(set(frozen.aspects))
    encoder, lower = tuned_lower_states(ontology, phase, aspects, cfg, frozen.ids)
    top = TextTop(encoder, cfg.tune_layers)
    top.load_state_dict(weights)
    cache = tuned_cache(frozen, lower, top, cfg.batch_size)
    cache.save(where)
    return cache

"""The GO text encoder: the packaged MiniLM, pooling, special tokens, truncation, bf16, int8."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from protgo.encoders.text import load_text_encoder, read_pooling
from protgo.errors import UserError

TEXTS = [
    "sequence-specific DNA binding: Binding to DNA of a specific nucleotide composition.",
    "DNA-binding transcription factor activity: A protein or a member of a complex that "
    "interacts selectively and non-covalently with a specific DNA sequence in order to "
    "modulate transcription.",
    "lipid metabolic process: The chemical reactions and pathways involving lipids.",
    "mitochondrial inner membrane: The inner, i.e. lumen-facing, lipid bilayer of the "
    "mitochondrial envelope.",
    "kinase activity: Catalysis of the transfer of a phosphate group to a substrate.",
    "glucose metabolic process",
]


@pytest.fixture(scope="module")
def encoder():
    """The fp32 reference (the default is bf16 where the CPU has it)."""
    return load_text_encoder(dtype="fp32")


def test_default_encoder_matches_sentence_transformers(encoder):
    from sentence_transformers import SentenceTransformer

    ours = encoder.encode(TEXTS, batch_size=4, progress=False)
    ref = SentenceTransformer(encoder.path, device="cpu").encode(
        TEXTS, normalize_embeddings=True, convert_to_numpy=True
    )
    assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_batched_length_sorted_encoding_equals_one_by_one(encoder):
    batched = encoder.encode(TEXTS, batch_size=3, progress=False)
    single = np.stack([encoder.encode([t], progress=False)[0] for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=2e-5)


def test_related_texts_are_closer(encoder):
    v = encoder.encode(TEXTS, progress=False)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2  # DNA binding vs lipid metabolism


def test_int8_agrees_with_fp32(encoder):
    q = load_text_encoder(quantize_int8=True)
    ref = encoder.encode(TEXTS, progress=False)
    got = q.encode(TEXTS, progress=False)
    cos = (ref * got).sum(1)
    assert cos.min() > 0.97, cos
    assert q.identity() != encoder.identity()


@pytest.mark.parametrize("path", ["packed", "autocast"])
def test_bf16_agrees_with_fp32(encoder, path):
    """Both bf16 paths against the fp32 reference (all of GO: benchmarks/go_side.py --all-go);
    the packed copy is the default on a CPU with native bf16."""
    from protgo import compute

    can_pack = compute.can_pack_bf16(torch.device("cpu"))
    fast = load_text_encoder(dtype="bf16")
    assert fast.bf16_path == ("packed" if can_pack else "autocast")
    if path == "packed" and not can_pack:
        pytest.skip("this CPU has no native bf16 (or torch no oneDNN): bf16 runs under autocast")
    fast.bf16_path = path
    cos = (encoder.encode(TEXTS, progress=False) * fast.encode(TEXTS, progress=False)).sum(1)
    assert cos.min() > 0.999, cos
    assert fast.identity()["dtype"] == "bf16" and encoder.identity()["dtype"] == "fp32"
    assert fast.identity()["bf16_path"] == path and "bf16_path" not in encoder.identity()
    assert encoder.model.embeddings.word_embeddings.weight.dtype == torch.float32  # the master


def test_packed_bf16_copy_follows_added_tokens():
    """A relation token added after the packed copy was built is encoded from its new row,
    as the fp32 encoder encodes it."""
    from protgo import compute

    if not compute.can_pack_bf16(torch.device("cpu")):
        pytest.skip("this CPU has no native bf16 (or torch no oneDNN)")
    ref, fast = load_text_encoder(dtype="fp32"), load_text_encoder(dtype="bf16")
    texts = ["glucose metabolic process [PART_OF] carbohydrate metabolic process"]
    fast.encode(texts, progress=False)  # builds the packed copy before the token exists
    for enc in (ref, fast):
        enc.add_special_tokens({"[PART_OF]": "part of"})
    cos = float((ref.encode(texts, progress=False) * fast.encode(texts, progress=False)).sum())
    assert cos > 0.999, cos


def test_auto_dtype_is_bf16_only_where_the_cpu_has_it():
    from protgo import compute

    expected = "bf16" if compute.native_bf16(torch.device("cpu")) else "fp32"
    assert load_text_encoder().dtype == expected
    assert load_text_encoder(quantize_int8=True).dtype == "fp32"  # int8 kernels take fp32
    with pytest.raises(UserError, match="go_text.dtype"):
        load_text_encoder(quantize_int8=True, dtype="bf16")


def test_special_tokens_stay_whole_and_start_from_their_words(encoder):
    before = encoder.identity()
    n_vocab = len(encoder.tokenizer)
    emb = encoder.model.get_input_embeddings().weight
    word_ids = encoder.tokenizer("is a", add_special_tokens=False)["input_ids"]
    expected = emb[word_ids].mean(0).clone()
    assert encoder.add_special_tokens({"[IS_A]": "is a"}) == ["[IS_A]"]
    assert encoder.add_special_tokens({"[IS_A]": "is a"}) == []  # idempotent
    assert len(encoder.tokenizer) == n_vocab + 1
    tid = encoder.tokenizer.convert_tokens_to_ids("[IS_A]")
    emb = encoder.model.get_input_embeddings().weight
    assert emb.shape[0] >= n_vocab + 1
    torch.testing.assert_close(emb[tid], expected)
    ids = encoder.tokenizer("glucose [IS_A] sugar", add_special_tokens=False)["input_ids"]
    assert ids.count(tid) == 1
    assert encoder.tokenizer.convert_ids_to_tokens(ids) == ["glucose", "[IS_A]", "sugar"]
    assert encoder.identity() != before


def test_truncation_is_counted(encoder):
    long = "binding " * 300
    tok = encoder.tokenize([long, "short text"])
    assert tok.n_truncated == 1
    assert len(tok.input_ids[0]) == encoder.max_length
    assert tok.lengths[0] > encoder.max_length
    cut = encoder.tokenizer([long, "short text"], truncation=True, max_length=encoder.max_length)
    assert tok.input_ids == [list(x) for x in cut["input_ids"]]  # the tokenizer's own cut


def test_pooling_read_from_checkpoint(tmp_path):
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(
        json.dumps([{"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"}])
    )
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    assert read_pooling(str(tmp_path)) == "cls"
    assert read_pooling(str(tmp_path / "nothing")) == "mean"


def test_missing_encoder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="text encoder"):
        load_text_encoder(str(tmp_path / "no-such-model"))


def test_a_checkpoint_with_a_dense_module_is_refused(tmp_path):
    """protgo applies Transformer, Pooling and Normalize itself; a Dense head would be
    skipped silently, so such a checkpoint is refused with the fix."""
    modules = [{"type": "sentence_transformers.models.Transformer", "path": ""},
               {"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"},
               {"type": "sentence_transformers.models.Dense", "path": "2_Dense"}]  # fmt: skip
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UserError, match="Dense module"):
        read_pooling(str(tmp_path))


@pytest.mark.parametrize("k", [1, 6])
def test_tuned_top_layers_start_as_the_frozen_encoder(encoder, k):
    """Lower states stored in bf16, then the top k layers: the encoder's own vectors."""
    from protgo.encoders.text_top import TextTop, lower_states

    ids = encoder.tokenize(TEXTS).input_ids
    lower = lower_states(encoder, ids, k, batch_size=4, progress=False)
    assert lower.lengths().tolist() == [len(x) for x in ids]
    ours = TextTop(encoder, k).encode(lower, batch_size=4)
    ref = encoder.encode_ids(ids, batch_size=4, progress=False)
    assert (ours * ref).sum(1).min() > 0.9999


def test_tuned_top_layers_refuse_more_layers_than_the_encoder_has(encoder):
    from protgo.encoders.text_top import TextTop

    with pytest.raises(UserError, match="tune_layers=7.*has 6 layers"):
        TextTop(encoder, 7)

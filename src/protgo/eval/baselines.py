"""The field's baselines, trained on the training split only, each giving :class:`Predictions`.

- :func:`naive`: term frequency among training proteins annotated in the term's aspect.
- :func:`diamond`: DIAMOND label transfer with DeepGOPlus' DiamondScore,
  ``score(q, t) = sum of bitscores of q's hits annotated with t / sum of all q's bitscores``.
- :func:`knn`: cosine k-nearest neighbours on mean residue vectors, similarity-weighted vote.
- :func:`mlp`: a multi-label MLP on mean residue vectors; closed vocabulary (training terms),
  so zero-shot terms score 0; early stopping on validation Fmax.
- :func:`blend`: ``alpha * a + (1 - alpha) * b``, alpha chosen per aspect by
  :func:`choose_alpha` on validation Fmax (protgo with DIAMOND, as ``predict`` gives it).

Labels are propagated (is_a, part_of) before training and scores are propagated (max) before
they are returned, so every prediction set is DAG-consistent. Mean embeddings come in as
``{pid: (D,) vector}`` (the caller reads them from the residue store), so no baseline needs a
protein model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from protgo.data.ontology import Ontology
from protgo.data.seqsearch import DiamondOptions, diamond_hits
from protgo.errors import UserError
from protgo.eval.metrics import evaluate_fast, truth_matrix
from protgo.eval.predictions import Predictions
from protgo.go import scoring

Annotations = Mapping[str, Iterable[str]]


def label_space(annotations: Annotations, ontology: Ontology) -> tuple[list[str], np.ndarray]:
    """Training vocabulary (propagated terms, sorted) and the (N, T) bool label matrix of the
    proteins of ``annotations`` in their sorted order."""
    pids = sorted(annotations)
    terms = sorted({t for p in pids for t in ontology.propagate(annotations[p])})
    return terms, truth_matrix(annotations, pids, terms, ontology)


def naive(train: Annotations, queries: Iterable[str], ontology: Ontology) -> Predictions:
    """Every query gets each term's frequency among the training proteins annotated in its
    aspect (propagated). Counted protein by protein: no (proteins x terms) matrix, which for
    Swiss-Prot's 413k training proteins was 9 GB."""
    counts: Counter[str] = Counter()
    annotated: Counter[str] = Counter()  # aspect -> proteins with any term in it
    for p in sorted(train):
        terms = ontology.propagate(train[p])
        counts.update(terms)
        annotated.update({ontology.aspect(t) for t in terms})
    terms = sorted(counts)
    freq = np.array([counts[t] / annotated[ontology.aspect(t)] for t in terms])
    queries = sorted(queries)
    return Predictions(queries, terms, np.tile(freq, (len(queries), 1)))


# ----------------------------------------------------------------------------------------------
# DIAMOND
# ----------------------------------------------------------------------------------------------
def diamond_score(
    hits: Mapping[str, list[tuple[str, float]]], train: Annotations, ontology: Ontology
) -> Predictions:
    """DiamondScore (:func:`protgo.go.scoring.transfer_scores`) from hits into ``train``;
    queries without a hit get no scores."""
    prop = {p: ontology.propagate(ts) for p, ts in train.items()}
    scores = scoring.transfer_scores(hits, prop)
    if not scores:
        return Predictions([], [], np.zeros((0, 0)))
    # Propagated labels already make the score DAG-consistent; propagate anyway (cheap, sure).
    return Predictions.from_dict(scores).propagated(ontology)


def diamond(
    train_seqs: Mapping[str, str],
    train: Annotations,
    query_seqs: Mapping[str, str],
    ontology: Ontology,
    opts: DiamondOptions | None = None,
) -> Predictions:
    """DIAMOND label transfer from the annotated training sequences to the queries."""
    db = {p: s for p, s in train_seqs.items() if p in train}
    return diamond_score(diamond_hits(query_seqs, db, opts), train, ontology)


# ----------------------------------------------------------------------------------------------
# Embedding baselines
# ----------------------------------------------------------------------------------------------
def _stack(emb: Mapping[str, np.ndarray], pids: list[str]) -> np.ndarray:
    missing = [p for p in pids if p not in emb]
    if missing:
        raise UserError(
            f"{len(missing)} proteins have no mean embedding (e.g. '{missing[0]}'); "
            "run `protgo embed residues` for the dataset"
        )
    return np.stack([np.asarray(emb[p], dtype=np.float32) for p in pids])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn(
    train_emb: Mapping[str, np.ndarray],
    train: Annotations,
    query_emb: Mapping[str, np.ndarray],
    ontology: Ontology,
    k: int = 10,
    chunk: int = 1024,
) -> Predictions:
    """score(q, t) = sum of cosine similarities (clipped at 0) of q's k nearest training
    proteins that carry t / sum over all k. A query never counts itself as a neighbour."""
    train_ids = sorted(p for p in train if p in train_emb)
    terms, y = label_space({p: train[p] for p in train_ids}, ontology)  # (N, T)
    x = _unit(_stack(train_emb, train_ids))  # (N, D)
    queries = sorted(query_emb)
    q = _unit(_stack(query_emb, queries))  # (Q, D)
    self_col = {p: i for i, p in enumerate(train_ids)}
    k = min(k, len(train_ids) - 1) if any(p in self_col for p in queries) else min(k, len(x))
    out = np.zeros((len(queries), len(terms)), dtype=np.float32)
    yf = y.astype(np.float32)
    for s in range(0, len(queries), chunk):
        sim = q[s : s + chunk] @ x.T  # (c, N)
        for r, p in enumerate(queries[s : s + chunk]):
            if p in self_col:
                sim[r, self_col[p]] = -np.inf
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # (c, k)
        w = np.clip(np.take_along_axis(sim, top, axis=1), 0, None)  # (c, k)
        votes = np.einsum("ck,ckt->ct", w, yf[top])  # (c, T)
        out[s : s + chunk] = votes / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    return Predictions(queries, terms, out)


@dataclass
class MlpOptions:
    hidden: int = 1024
    dropout: float = 0.3
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    max_epochs: int = 50
    patience: int = 5
    seed: int = 0
    threads: int | None = None


def mlp(
    train_emb: Mapping[str, np.ndarray],
    train: Annotations,
    valid_emb: Mapping[str, np.ndarray],
    valid: Annotations,
    query_emb: Mapping[str, np.ndarray],
    ontology: Ontology,
    opts: MlpOptions | None = None,
    ia: Mapping[str, float] | None = None,
) -> Predictions:
    """MLP (Linear-ReLU-Dropout-Linear, sigmoid per training term), trained with binary
    cross-entropy; keeps the epoch with the best mean validation Fmax over aspects."""
    import torch  # here: the other baselines and `protgo evaluate` run without torch

    opts = opts or MlpOptions()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    train_ids = sorted(p for p in train if p in train_emb)
    terms, y = label_space({p: train[p] for p in train_ids}, ontology)
    x = torch.from_numpy(_stack(train_emb, train_ids))  # (N, D)
    yt = torch.from_numpy(y.astype(np.float32))  # (N, T)
    mu, sd = x.mean(0), x.std(0) + 1e-6  # standardise features with training statistics
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], opts.hidden),
        torch.nn.ReLU(),
        torch.nn.Dropout(opts.dropout),
        torch.nn.Linear(opts.hidden, len(terms)),
    )
    optim = torch.optim.AdamW(net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    valid_ids = sorted(p for p in valid if p in valid_emb)

    def predict(emb: Mapping[str, np.ndarray], pids: list[str]) -> Predictions:
        net.eval()
        with torch.no_grad():
            xq = (torch.from_numpy(_stack(emb, pids)) - mu) / sd
            s = torch.sigmoid(net(xq)).numpy()
        return Predictions(pids, terms, scoring.propagate(s, terms, ontology))

    best, best_state, waited = -1.0, None, 0
    gen = torch.Generator().manual_seed(opts.seed)
    for _epoch in range(opts.max_epochs):
        _mlp_epoch(net, optim, (x - mu) / sd, yt, opts.batch_size, gen)
        rows = evaluate_fast(predict(valid_emb, valid_ids), valid, valid_ids, ontology, ia)
        score = scoring.selection_score(rows) or 0.0  # as protgo's checkpoints are chosen
        if score > best:
            best, waited = score, 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            waited += 1
            if waited >= opts.patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    return predict(query_emb, sorted(query_emb))


def _mlp_epoch(net, optim, x, y, batch_size: int, gen) -> None:
    """One pass over standardised features ``x`` (N, D) and labels ``y`` (N, T)."""
    import torch

    net.train()
    for idx in torch.randperm(len(x), generator=gen).split(batch_size):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x[idx]), y[idx])
        optim.zero_grad()
        loss.backward()
        optim.step()


# ----------------------------------------------------------------------------------------------
# Blend
# ----------------------------------------------------------------------------------------------
def blend(
    a: Predictions, b: Predictions, alpha: float | Mapping[str, float],
    ontology: Ontology | None = None,
) -> Predictions:  # fmt: skip
    """``alpha * a + (1 - alpha) * b`` over the union of proteins and terms (missing: 0);
    ``alpha`` one weight, or one per aspect ({aspect: weight}, with ``ontology``; terms of
    another aspect keep ``a``'s score)."""
    pids = sorted(set(a.pids) | set(b.pids))
    terms = sorted(set(a.terms) | set(b.terms))
    w = alpha_per_term(alpha, terms, ontology)
    scores = w * a.aligned(pids, terms) + (1 - w) * b.aligned(pids, terms)
    return Predictions(pids, terms, scores)


def alpha_per_term(
    alpha: float | Mapping[str, float], terms: list[str], ontology: Ontology | None
) -> np.ndarray | float:
    """(T,) weights of ``a`` from one weight or one per aspect."""
    if not isinstance(alpha, Mapping):
        return float(alpha)
    if ontology is None:
        raise ValueError("a weight per aspect needs the ontology")
    return np.array([alpha.get(ontology.aspect(t), 1.0) if t in ontology else 1.0
                     for t in terms])  # fmt: skip


def choose_alpha(
    a: Predictions,
    b: Predictions,
    valid: Annotations,
    ontology: Ontology,
    grid: Iterable[float] = np.linspace(0, 1, 11),
    ia: Mapping[str, float] | None = None,
) -> tuple[dict[str, float], dict[str, dict[float, float]]]:
    """Per aspect, the alpha of :func:`blend` with the best validation Fmax, and the Fmax of
    every alpha tried ({aspect: {alpha: fmax}}; ties go to the alpha nearest 0.5, the even
    mix). Blends of one aspect's terms do not change another's Fmax, so one pass per alpha
    scores every aspect."""
    a, b = a.propagated(ontology), b.propagated(ontology)
    pids = sorted(valid)
    tried: dict[str, dict[float, float]] = {}
    for alpha in grid:
        for r in evaluate_fast(blend(a, b, float(alpha)), valid, pids, ontology, ia):
            tried.setdefault(r["aspect"], {})[round(float(alpha), 6)] = float(r["fmax"])
    best = {asp: max(t, key=lambda al, t=t: (t[al], -abs(al - 0.5))) for asp, t in tried.items()}
    return best, tried

"""Training losses: each a pure tensor function plus a thin module (hyperparameters in
``__init__``, ``forward -> (value, parts)`` for logging).

Shapes: B proteins, C candidates per protein, U unique GO ids of the batch, A aligned dims.

* :func:`multi_positive_info_nce` -- InfoNCE with several (weighted) positives per row; used
  protein->GO over each protein's C candidates and GO->protein over the B proteins.
* :func:`distill_kl` -- KL(teacher || student) over the candidates at temperature tau (times
  tau^2 so gradients keep their size across tau). Teachers: :class:`EmaTeacher` (an EMA copy
  of the student) and :class:`HomologyTeacher` (DIAMOND label transfer from training proteins).
* :func:`attribution_margin` -- masking the most-attended residues must lower a positive's
  score by at least ``margin`` more than masking as many random residues.
* :func:`score_entropy` -- mean entropy of each protein's score distribution; the loss is its
  negative, so over-confident distributions cost more.
* :func:`dag_consistency` -- parent/child GO vectors close, and no protein scores a child above
  its parent (hinge).
* :func:`vtrue_anchor` -- the pairwise cosines among the batch's projected GO vectors stay
  close to those among their text vectors.
* :func:`binary_term_loss` -- binary cross-entropy of per-(protein, term) logits (with the
  term prior, :meth:`ProtGoAligner.term_logits`) against propagated annotations: what makes
  scores comparable across terms and proteins, as CAFA's single-threshold Fmax needs.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from protgo.config import LossConfig
from protgo.go.scoring import transfer_scores
from protgo.model.aligner import candidate_scores

NEG = -1e4  # logit for invalid slots after temperature: exp(NEG) == 0 in fp32, no NaN grads


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A 0 that keeps the graph (so ``backward`` works when no row qualifies)."""
    return like.sum() * 0.0


# ---- pure functions ---------------------------------------------------------------------------
def multi_positive_info_nce(
    logits: torch.Tensor, pos: torch.Tensor, weight: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Mean over rows with a positive of ``-sum_p w_p log softmax(logits)_p / sum_p w_p``.

    ``logits`` (R, K); ``pos`` (R, K) bool; ``weight`` (R, K) positive weights (None: 1);
    ``valid`` (R, K) bool, slots that exist (None: all). Softmax over the valid slots.
    """
    valid = torch.ones_like(pos) if valid is None else valid
    logp = torch.log_softmax(logits.masked_fill(~valid, NEG), dim=1)  # (R, K)
    w = pos & valid
    w = w.to(logits.dtype) if weight is None else weight.to(logits.dtype) * w
    total = w.sum(1)  # (R,)
    rows = total > 0
    if not rows.any():
        return _zero(logits)
    per_row = -(w * logp).sum(1)[rows] / total[rows]
    return per_row.mean()


def distill_kl(
    student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor, tau: float,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """``tau^2 * mean_b KL(softmax(teacher_b / tau) || softmax(student_b / tau))`` over the
    valid slots (R, K); ``rows`` (R,) bool picks the rows the teacher speaks for."""
    log_s = torch.log_softmax((student / tau).masked_fill(~valid, NEG), dim=1)
    log_t = torch.log_softmax((teacher.detach() / tau).masked_fill(~valid, NEG), dim=1)
    kl = (log_t.exp() * (log_t - log_s)).masked_fill(~valid, 0.0).sum(1)  # (R,)
    keep = valid.any(1) if rows is None else rows & valid.any(1)
    if not keep.any():
        return _zero(student)
    return tau**2 * kl[keep].mean()


def attribution_margin(
    cos_top: torch.Tensor, cos_rand: torch.Tensor, pos: torch.Tensor, margin: float
) -> torch.Tensor:
    """Mean over positive pairs of ``relu(margin + cos_top - cos_rand)``.

    ``cos_top`` / ``cos_rand`` (B, C): scores with the top-attended / random residues masked.
    The drop from masking the top residues should exceed the random drop by ``margin``:
    ``(full - top) - (full - rand) = rand - top >= margin``.
    """
    if not pos.any():
        return _zero(cos_top)
    return F.relu(margin + cos_top - cos_rand)[pos].mean()


def attribution_masks(
    attn: torch.Tensor,
    mask: torch.Tensor,
    top_frac: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residue masks (B, L) with the top-attended / as many random residues removed.

    Each protein loses ``n = max(1, round(top_frac * length))`` residues (never all of them).
    """
    lengths = mask.sum(1)  # (B,)
    n = (top_frac * lengths.float()).round().clamp(min=1)
    n = torch.minimum(n, (lengths - 1).clamp(min=0).float())[:, None]  # (B, 1)
    top_rank = _rank_desc(attn.detach().masked_fill(~mask, -1.0))
    noise = torch.rand(mask.shape, generator=generator).to(attn.device)
    rand_rank = _rank_desc(noise.masked_fill(~mask, -1.0))
    return mask & (top_rank >= n), mask & (rand_rank >= n)


def _rank_desc(x: torch.Tensor) -> torch.Tensor:
    """(B, L) -> position of each entry when its row is sorted descending (0 = largest)."""
    order = torch.argsort(x, dim=1, descending=True, stable=True)
    return torch.argsort(order, dim=1, stable=True)


def score_entropy(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over rows with a valid slot of the entropy of softmax(logits) over valid slots."""
    logp = torch.log_softmax(logits.masked_fill(~valid, NEG), dim=1)
    ent = -(logp.exp() * logp).masked_fill(~valid, 0.0).sum(1)  # (R,)
    rows = valid.any(1)
    return ent[rows].mean() if rows.any() else _zero(logits)


def dag_consistency(
    protein: torch.Tensor, go: torch.Tensor, pairs: torch.Tensor, margin: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(closeness, hinge) for (child, parent) rows of ``pairs`` (P, 2) into ``go`` (U, A).

    closeness: mean ``1 - cos(child, parent)``; hinge: mean over proteins (B, A) and pairs of
    ``relu(s(b, child) - s(b, parent) + margin)`` with cosine scores (true-path rule).
    """
    if len(pairs) == 0:
        return _zero(go), _zero(go)
    child, parent = go[pairs[:, 0]], go[pairs[:, 1]]  # (P, A)
    close = (1.0 - (child * parent).sum(-1)).mean()
    hinge = F.relu(protein @ child.T - protein @ parent.T + margin).mean()  # (B, P)
    return close, hinge


def vtrue_anchor(go: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Mean over pairs i != j of ``(cos(go_i, go_j) - cos(text_i, text_j))^2``; (U, A), (U, D)."""
    U = len(go)
    if U < 2:
        return _zero(go)
    g = F.normalize(go, dim=-1)
    t = F.normalize(text.to(go.dtype), dim=-1)
    diff = (g @ g.T - t @ t.T) ** 2  # (U, U)
    # the off-diagonal mean as (sum - trace): no (U, U) mask or gathered copy
    return (diff.sum() - diff.diagonal().sum()) / (U * (U - 1))


def binary_term_loss(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Mean over proteins of the summed binary cross-entropy over terms, divided by the mean
    positive count, so the loss neither grows with the number of terms scored nor lets the
    many negatives drown the few positives; (B, K) logits and truth."""
    per_pair = F.binary_cross_entropy_with_logits(logits, truth.to(logits.dtype), reduction="none")
    return per_pair.sum() / truth.sum().clamp(min=1)


def dag_pairs(go_ids: Sequence[str], ontology) -> torch.Tensor:
    """(P, 2) int64 (child row, parent row) for direct is_a/part_of edges within ``go_ids``."""
    col = {g: i for i, g in enumerate(go_ids)}
    pairs = [(i, col[p]) for i, g in enumerate(go_ids) if g in ontology
             for p in ontology.parents(g) if p in col]  # fmt: skip
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


# ---- teachers ---------------------------------------------------------------------------------
class EmaTeacher:
    """An exponential moving average copy of the student; ``logits`` over the same candidates."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for t, s in zip(self.model.parameters(), model.parameters(), strict=True):
            t.mul_(self.decay).add_(s.detach(), alpha=1.0 - self.decay)
        for t, s in zip(self.model.buffers(), model.buffers(), strict=True):
            t.copy_(s)

    @torch.no_grad()
    def logits(self, batch: dict, go_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C) teacher logits and (B,) rows it speaks for (all)."""
        out = self.model(batch["residues"], batch["mask"], go_text, batch["cand_idx"])
        return out["logits"], torch.ones(len(out["logits"]), dtype=torch.bool)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


class HomologyTeacher:
    """DIAMOND label transfer (DiamondScore, :func:`protgo.go.scoring.transfer_scores`)
    over the hits of each protein among the training proteins, itself excluded.

    Teacher logits are ``tau * log(score + eps)``, so at temperature tau the teacher's
    distribution over the candidates is proportional to the transferred score.
    """

    def __init__(
        self, hits: Mapping[str, Sequence[tuple[str, float]]],
        train_annotations: Mapping[str, Iterable[str]], ontology=None, eps: float = 1e-3,
    ):  # fmt: skip
        self.eps = eps
        prop = ontology.propagate if ontology is not None else set
        labels = {p: frozenset(prop(a)) for p, a in train_annotations.items()}
        others = {q: [(s, w) for s, w in hs if s != q] for q, hs in hits.items()}
        self.transferred = transfer_scores(others, labels)

    def scores(self, pids: Sequence[str], go_ids: Sequence[str]) -> torch.Tensor:
        """(B, U) transferred scores in [0, 1] (0 for proteins without hits)."""
        out = torch.zeros(len(pids), len(go_ids))
        for b, p in enumerate(pids):
            got = self.transferred.get(p, {})
            out[b] = torch.tensor([got.get(g, 0.0) for g in go_ids])
        return out

    def logits(self, batch: dict, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C) teacher logits over the candidates and (B,) rows with at least one hit."""
        s = candidate_scores(self.scores(batch["pids"], batch["go_ids"]), batch["cand_idx"])
        rows = torch.tensor([p in self.transferred for p in batch["pids"]])
        return tau * torch.log(s + self.eps), rows


# ---- modules ----------------------------------------------------------------------------------
class InfoNCELoss(nn.Module):
    """Multi-positive InfoNCE, protein->GO over candidates and GO->protein over the batch."""

    def forward(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        p2g = multi_positive_info_nce(
            out["logits"], batch["cand_pos"], batch["cand_weight"], batch["cand_valid"]
        )
        g2p = multi_positive_info_nce(out["logits_all"].T, batch["go_pos"], batch["go_weight"])
        value = 0.5 * (p2g + g2p)
        return value, {"con_p2g": p2g.detach(), "con_g2p": g2p.detach()}


class DistillLoss(nn.Module):
    def __init__(self, tau: float):
        super().__init__()
        self.tau = tau

    def forward(self, out: dict, batch: dict, teacher_logits, rows) -> tuple[torch.Tensor, dict]:
        value = distill_kl(out["logits"], teacher_logits, batch["cand_valid"], self.tau, rows)
        return value, {"distill_rows": rows.sum()}


class AttributionLoss(nn.Module):
    """Needs the model: two extra pooling passes with residues masked."""

    def __init__(self, top_frac: float, margin: float):
        super().__init__()
        self.top_frac, self.margin = top_frac, margin

    def forward(self, model, out: dict, batch: dict, generator=None) -> tuple[torch.Tensor, dict]:

        keep_top, keep_rand = attribution_masks(
            out["attn"], batch["mask"], self.top_frac, generator
        )
        x, go = batch["residues"], out["go"]
        cos = [
            candidate_scores(model.encode_protein(x, keep)["protein"] @ go.T, batch["cand_idx"])
            for keep in (keep_top, keep_rand)
        ]  # 2 x (B, C)
        value = attribution_margin(cos[0], cos[1], batch["cand_pos"], self.margin)
        pos = batch["cand_pos"].to(cos[0].dtype)  # the mean over positives, without a sync
        drop = ((cos[1] - cos[0]) * pos).sum() / pos.sum().clamp(min=1)
        return value, {"attr_drop_gap": drop.detach()}


class EntropyLoss(nn.Module):
    def forward(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        ent = score_entropy(out["logits"], batch["cand_valid"])
        return -ent, {"entropy": ent.detach()}


class DagLoss(nn.Module):
    def __init__(self, margin: float = 0.0):
        super().__init__()
        self.margin = margin

    def forward(self, out: dict, pairs: torch.Tensor) -> tuple[torch.Tensor, dict]:
        close, hinge = dag_consistency(out["protein"], out["go"], pairs, self.margin)
        return close + hinge, {"dag_close": close.detach(), "dag_hinge": hinge.detach()}


class VtrueLoss(nn.Module):
    def forward(self, out: dict, go_text: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return vtrue_anchor(out["go"], go_text), {}


class TermBCELoss(nn.Module):
    def forward(
        self, model, out: dict, go_text: torch.Tensor, terms: dict
    ) -> tuple[torch.Tensor, dict]:
        """The scored terms are the batch's own GO terms ``terms["batch_cols"]`` (S,) (rows
        of ``out["go"]`` and ``go_text``: the forward has projected them already, and the GO
        head is the largest cost of a step) and others, ``terms["text"]`` (E, Dt);
        ``terms["truth"]`` (B, S + E) in that order; ``terms["residual_rows"]`` (S + E,) their
        rows in the model's residual table (None: text only)."""
        cols, text = terms["batch_cols"], terms["text"]
        go = torch.cat([out["go"][cols], model.encode_go(text)])  # (S + E, A)
        text = torch.cat([go_text[cols], text.to(go_text.dtype)])
        logits = model.term_logits(out["protein"], go, text, terms.get("residual_rows"))
        value = binary_term_loss(logits, terms["truth"])
        return value, {"bce_terms": float(len(go))}


class AlignmentLoss(nn.Module):
    """The weighted total; a term with weight 0 is not computed. ``parts`` holds every
    computed term (unweighted) and the total as detached tensors, left on the device: reading
    one (``float()``) waits for the device, so the trainer does it once per log step."""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg
        self.con = InfoNCELoss()
        self.distill = DistillLoss(cfg.tau)
        self.attr = AttributionLoss(cfg.attr_top_frac, cfg.attr_margin)
        self.ent = EntropyLoss()
        self.dag = DagLoss()
        self.vtrue = VtrueLoss()
        self.bce = TermBCELoss()

    def forward(
        self, model, out: dict, batch: dict, go_text: torch.Tensor, pairs: torch.Tensor,
        lambda_attr: float, teacher=None, generator=None, bce_terms: dict | None = None,
    ) -> tuple[torch.Tensor, dict]:  # fmt: skip
        """``bce_terms``: terms and truth of the binary loss (:class:`TermBCELoss`); None: off."""
        c = self.cfg
        terms = [
            ("con", c.lambda_con, lambda: self.con(out, batch)),
            ("ent", c.lambda_ent, lambda: self.ent(out, batch)),
            ("dag", c.lambda_dag, lambda: self.dag(out, pairs)),
            ("vtrue", c.lambda_vtrue, lambda: self.vtrue(out, go_text)),
            ("attr", lambda_attr, lambda: self.attr(model, out, batch, generator)),
        ]
        if teacher is not None:
            terms.append(("distill", c.lambda_distill, lambda: self.distill(out, batch, *teacher)))
        if bce_terms is not None:
            terms.append(("bce", c.lambda_bce, lambda: self.bce(model, out, go_text, bce_terms)))
        total = _zero(out["logits"])
        parts: dict[str, torch.Tensor | float] = {}
        for name, weight, fn in terms:
            if weight == 0:
                continue
            value, extra = fn()
            total = total + weight * value
            parts[name] = value.detach()
            parts.update(extra)
        parts["total"] = total.detach()
        return total, parts

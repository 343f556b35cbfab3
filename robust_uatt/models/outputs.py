"""What a model's logits decide, and whether that decision is right: one place for classes and for sequences.

Two output shapes exist in the toolkit:
- classification: logits (B, K), labels y (B,); the decision is ``argmax``.
- sequences (Table 3): logits (B, K, S), labels y (B, S) -- the class axis second, PyTorch's layout for
  ``F.cross_entropy`` over S positions. The last class K-1 is the terminal label; labels hold the digits, the
  terminal, then ``IGNORE`` (-100, cross-entropy's ``ignore_index``) after it (``data.multidigit``). The decision is
  the argmax per position, *decoded* like the recurrent model reads it: it stops at its first predicted terminal,
  so every position after that one becomes ``IGNORE``.

A prediction is right when it equals the label: for a sequence, every digit and the length (the position of the
terminal). Training, evaluation and the attack harness all judge through :func:`correct` / :func:`hits`, so an
attack breaks a sequence point exactly when the decoded predicted sequence changes.
"""

from __future__ import annotations

from torch import Tensor

from robust_uatt.data.multidigit import IGNORE


def decide(logits: Tensor) -> Tensor:
    """(B, K) -> (B,) classes; (B, K, S) -> (B, S) sequences decoded up to the first terminal (class K-1)."""
    pred = logits.argmax(1)
    if logits.dim() == 2:
        return pred
    terminal = logits.shape[1] - 1
    ended = (pred == terminal).long().cumsum(1)  # 1 from the first terminal on, 2+ after a second one
    after = (ended - (pred == terminal).long()) > 0  # strictly after the first terminal
    return pred.masked_fill(after, IGNORE)


def hits(pred: Tensor, y: Tensor) -> Tensor:
    """bool (B,): the decided class equals the label, or the whole decoded sequence equals the label sequence."""
    if pred.shape != y.shape:
        raise ValueError(f"predictions {tuple(pred.shape)} and labels {tuple(y.shape)} differ in shape (a sequence "
                         "model needs sequence labels, a classifier class labels)")
    same = pred == y.to(pred.device)
    return same if same.dim() == 1 else same.all(1)


def correct(logits: Tensor, y: Tensor) -> Tensor:
    """bool (B,): whether each example's prediction is right (``hits(decide(logits), y)``)."""
    return hits(decide(logits), y)


def position_margins(logits: Tensor, y: Tensor) -> Tensor:
    """Sequence logits (B, K, S), labels (B, S) -> per position max_{j != y_s} z_{j,s} - z_{y_s,s} (B, S), -inf where
    the label is ``IGNORE`` (after the terminal)."""
    target = y.clamp(min=0)[:, None, :]
    true = logits.gather(1, target).squeeze(1)
    others = logits.scatter(1, target, float("-inf"))
    return (others.amax(1) - true).masked_fill(y == IGNORE, float("-inf"))


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """max_{j != y} z_j - z_y per example (B,): positive iff the prediction is wrong. For a sequence, the largest
    margin over the positions that count (the digits and the terminal): the sequence is wrong iff one of them is."""
    if logits.dim() == 3:
        return position_margins(logits, y).amax(1)
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return others.amax(1) - true


def is_sequence(y: Tensor) -> bool:
    """Sequence labels are (N, S); class labels (N,)."""
    return y.dim() == 2


__all__ = ["IGNORE", "decide", "hits", "correct", "margin", "position_margins", "is_sequence"]

"""The wide & deep metrics (kuberec.widedeep.evaluate's docstring defines each): pooled and per-user AUC, log loss,
MAP@k and recall@k over each user's ranked candidates, and the Instacart basket F1. Training (early stopping on the
valid split's log loss), tuning trials and the evaluation all score with these."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kuberec.errors import KuberecError

MAP_K = 10
EPSILON = 1e-7
METRICS = ("auc", "user_auc", "log_loss", f"map_at_{MAP_K}", f"recall_at_{MAP_K}", "f1")


class EvaluationError(KuberecError):
    """The evaluation data cannot be scored (no rows, one class only, missing model)."""


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise EvaluationError(f"AUC needs both labels; got {n_pos} positives and {n_neg} negatives")
    ranks = pd.Series(np.asarray(scores, np.float64)).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    y = np.asarray(labels, np.float64)
    p = np.clip(np.asarray(probabilities, np.float64), EPSILON, 1 - EPSILON)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _ranked(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """One row per candidate, grouped by user, best score first (ties: input order), with rank and hits so far."""
    frame = pd.DataFrame({"user": np.asarray(users), "label": np.asarray(labels).astype(np.int64),
                          "score": np.asarray(scores, np.float64)})
    frame = frame.iloc[np.lexsort((-frame["score"].to_numpy(), frame["user"].to_numpy()))]
    grouped = frame.groupby("user", sort=False)
    return frame.assign(rank=grouped.cumcount().to_numpy() + 1, hits=grouped["label"].cumsum().to_numpy())


def ranking_metrics(users: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = MAP_K) -> dict[str, float]:
    """MAP@k and recall@k: means over users with a positive (see the module docstring)."""
    frame = _ranked(users, labels, scores)
    top = (frame["rank"] <= k).to_numpy()
    rel = frame["label"].to_numpy() == 1
    frame = frame.assign(gain=np.where(top & rel, frame["hits"] / frame["rank"], 0.0), found=top & rel)
    per_user = frame.groupby("user").agg(gain=("gain", "sum"), found=("found", "sum"), positives=("label", "sum"))
    per_user = per_user[per_user["positives"] > 0]
    if per_user.empty:
        raise EvaluationError("MAP@k needs at least one user with a positive")
    return {f"map_at_{k}": float((per_user["gain"] / np.minimum(per_user["positives"], k)).mean()),
            f"recall_at_{k}": float((per_user["found"] / per_user["positives"]).mean())}


def map_at_k(users: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = MAP_K) -> float:
    """Mean over users with a positive of AP@k of their candidates ranked by score (ties: input order)."""
    return ranking_metrics(users, labels, scores, k)[f"map_at_{k}"]


def user_auc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean over users with both labels of the AUC among their own candidates (average ranks for ties)."""
    frame = pd.DataFrame({"user": np.asarray(users), "label": np.asarray(labels).astype(np.int64),
                          "score": np.asarray(scores, np.float64)})
    frame["rank"] = frame.groupby("user")["score"].rank(method="average")
    per_user = frame.groupby("user").agg(n=("label", "size"), pos=("label", "sum"))
    per_user["rank_sum"] = frame[frame["label"] == 1].groupby("user")["rank"].sum()
    per_user = per_user[(per_user["pos"] > 0) & (per_user["pos"] < per_user["n"])]
    if per_user.empty:
        raise EvaluationError("per-user AUC needs a user with both labels")
    neg = per_user["n"] - per_user["pos"]
    return float(((per_user["rank_sum"] - per_user["pos"] * (per_user["pos"] + 1) / 2)
                  / (per_user["pos"] * neg)).mean())


def basket_f1(users: np.ndarray, labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """Mean over users with a positive of the F1 of {candidates scoring >= threshold} against their positives."""
    frame = pd.DataFrame({"user": np.asarray(users), "label": np.asarray(labels).astype(np.int64),
                          "chosen": np.asarray(scores, np.float64) >= threshold})
    frame["hit"] = frame["chosen"] & (frame["label"] == 1)
    per_user = frame.groupby("user").agg(positives=("label", "sum"), chosen=("chosen", "sum"), hits=("hit", "sum"))
    per_user = per_user[per_user["positives"] > 0]
    if per_user.empty:
        raise EvaluationError("F1 needs at least one user with a positive")
    return float((2 * per_user["hits"] / (per_user["positives"] + per_user["chosen"])).mean())


def best_threshold(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold (a quantile of the scores) that maximises `basket_f1` on these rows."""
    candidates = np.unique(np.quantile(np.asarray(scores, np.float64), np.linspace(0.5, 0.995, 60)))
    return float(max(candidates, key=lambda t: basket_f1(users, labels, scores, t)))


def roc_curve(labels: np.ndarray, scores: np.ndarray, points: int = 101) -> dict[str, list[float]]:
    """The ROC curve at `points` score thresholds (quantiles of the scores, plus one above the highest): false and
    true positive rates of "score >= threshold", for a chart (KFP's ClassificationMetrics)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, np.float64)
    if labels.all() or not labels.any():
        raise EvaluationError("a ROC curve needs both labels")
    thresholds = np.unique(np.quantile(scores, np.linspace(0, 1, points - 1)))[::-1]
    thresholds = np.concatenate([[np.nextafter(scores.max(), np.inf)], thresholds])
    chosen = scores[None, :] >= thresholds[:, None]
    tpr = (chosen & labels).sum(axis=1) / labels.sum()
    fpr = (chosen & ~labels).sum(axis=1) / (~labels).sum()
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thresholds.tolist()}


def confusion_matrix(labels: np.ndarray, scores: np.ndarray, threshold: float) -> list[list[int]]:
    """[[true negatives, false positives], [false negatives, true positives]] of "score >= threshold"."""
    labels = np.asarray(labels).astype(bool)
    chosen = np.asarray(scores, np.float64) >= threshold
    return [[int((~labels & ~chosen).sum()), int((~labels & chosen).sum())],
            [int((labels & ~chosen).sum()), int((labels & chosen).sum())]]


def metrics(users: np.ndarray, labels: np.ndarray, scores: np.ndarray,
            threshold: float | None = None) -> dict[str, float]:
    """The metrics of the module docstring; `f1` only with the basket `threshold` (chosen on other rows)."""
    values = {"auc": auc(labels, scores), "user_auc": user_auc(users, labels, scores),
              "log_loss": log_loss(labels, scores), **ranking_metrics(users, labels, scores)}
    if threshold is not None:
        values["f1"] = basket_f1(users, labels, scores, threshold)
    return values

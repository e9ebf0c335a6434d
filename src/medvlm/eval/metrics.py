"""Clean-accuracy metrics for classification and VQA, and the chance baselines they are read against.

All functions take NumPy arrays and return plain Python numbers (JSON-ready). A metric that has no data
to be computed on (closed-question accuracy on a test set without closed questions) is None, never NaN.
"""

from __future__ import annotations

import numpy as np
from sklearn.dummy import DummyClassifier
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from medvlm.io import DataError


def macro_auroc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Macro one-vs-rest AUROC over the classes PRESENT in `labels`.

    A class with no test sample has no positives, so its one-vs-rest AUROC is undefined: it is left out
    of the average (its probability column still takes part in the softmax). At least two classes must be
    present, else no AUROC is defined at all and a DataError says so.
    """
    present = np.unique(labels)
    if len(present) < 2:
        raise DataError(f"AUROC needs at least two classes in the test labels, found {present.tolist()}")
    # One indicator column per present class -> sklearn averages the per-class binary AUROCs.
    indicators = (labels[:, None] == present[None, :]).astype(np.int64)
    return float(roc_auc_score(indicators, probabilities[:, present], average="macro"))


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float | int]:
    """Accuracy, macro-F1 and macro one-vs-rest AUROC of softmax `probabilities` (N×C) against `labels`.

    Macro-F1 averages over the classes that occur in the labels or the predictions (sklearn's default), so
    a class absent from both does not count as an F1 of 0.
    """
    predictions = probabilities.argmax(axis=1)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "macro_auroc": macro_auroc(labels, probabilities),
        "n": int(len(labels)),
    }


def _accuracy_or_none(labels: np.ndarray, predictions: np.ndarray) -> float | None:
    return float(accuracy_score(labels, predictions)) if len(labels) else None


def vqa_metrics(labels: np.ndarray, predictions: np.ndarray, closed: np.ndarray) -> dict[str, float | int | None]:
    """VQA accuracy overall and on closed / open questions.

    `labels` index the train answer vocabulary; -1 marks a test answer outside it, which no prediction
    (always >= 0) can match, so those questions count as wrong.
    """
    closed = closed.astype(bool)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "closed_accuracy": _accuracy_or_none(labels[closed], predictions[closed]),
        "open_accuracy": _accuracy_or_none(labels[~closed], predictions[~closed]),
        "n": int(len(labels)),
    }


def majority_accuracy(train_labels: np.ndarray, test_labels: np.ndarray) -> float | None:
    """Test accuracy of always answering the most frequent train label (ties: the smallest index);
    None when either side is empty."""
    if len(train_labels) == 0 or len(test_labels) == 0:
        return None
    dummy = DummyClassifier(strategy="most_frequent").fit(np.zeros((len(train_labels), 1)), train_labels)
    return float(dummy.score(np.zeros((len(test_labels), 1)), test_labels))


def classification_chance(
    train_labels: np.ndarray, test_labels: np.ndarray, n_classes: int
) -> dict[str, float | None]:
    """Expected accuracy of a uniform guess over `n_classes`, and of the train-majority label."""
    return {"uniform": 1.0 / n_classes, "majority": majority_accuracy(train_labels, test_labels)}


def vqa_chance(train_labels: np.ndarray, train_closed: np.ndarray,
               test_labels: np.ndarray, test_closed: np.ndarray) -> dict[str, float | None]:
    """Majority-answer baselines: overall, and per question type with that type's most frequent answer."""
    train_closed, test_closed = train_closed.astype(bool), test_closed.astype(bool)
    return {
        "majority": majority_accuracy(train_labels, test_labels),
        "majority_closed": majority_accuracy(train_labels[train_closed], test_labels[test_closed]),
        "majority_open": majority_accuracy(train_labels[~train_closed], test_labels[~test_closed]),
    }


class ResampledClassification:
    """[accuracy, macro-F1, macro-AUROC] of bootstrap resamples of one test set, with the definitions of
    `classification_metrics`; AUROC is NaN when a resample holds fewer than two classes.

    Written by hand because the bootstrap scores every test set 1,000 times: sklearn's input validation
    alone costs ~13 ms a call, and re-ranking each resample (scipy's rankdata) ~2 ms. Here each class's scores
    are sorted once; a resample is the count of times it draws each item, and every metric is a count-weighted
    sum over the original items. One-vs-rest AUROC = Mann-Whitney U / (n_pos * n_neg) with ties counted half,
    U = sum over positives of the drawn negatives scoring below it, plus half of those scoring the same. All
    sums are of integers and halves, so they are exact in float64 and equal the rank-based values.
    Tests check it equals `classification_metrics` on resampled arrays (ties included).
    """

    def __init__(self, labels: np.ndarray, probabilities: np.ndarray):
        self.labels = np.asarray(labels)
        self.n_classes = probabilities.shape[1]
        predictions = probabilities.argmax(axis=1)
        self.predictions = predictions
        self.correct = predictions == self.labels
        self.classes = np.unique(self.labels)
        self.order, self.group_first, self.group_last, self.positive_sorted = [], [], [], []
        for label in self.classes:
            order = np.argsort(probabilities[:, label], kind="stable")
            scores = probabilities[order, label]
            new_group = np.r_[True, scores[1:] != scores[:-1]]
            first = np.flatnonzero(new_group)
            group = np.cumsum(new_group) - 1  # tie group of each sorted position
            last = np.r_[first[1:] - 1, len(scores) - 1]
            self.order.append(order)
            self.group_first.append(first[group])
            self.group_last.append(last[group])
            self.positive_sorted.append(self.labels[order] == label)

    def __call__(self, index: np.ndarray) -> list[float]:
        counts = np.bincount(index, minlength=len(self.labels))
        n = len(index)
        accuracy = float(counts[self.correct].sum() / n)
        # Macro-F1 over the classes in labels or predictions, F1 = 2TP / (2TP + FP + FN) (sklearn's default).
        true_positive = np.bincount(self.labels[self.correct], weights=counts[self.correct],
                                    minlength=self.n_classes)
        label_count = np.bincount(self.labels, weights=counts, minlength=self.n_classes)
        predicted_count = np.bincount(self.predictions, weights=counts, minlength=self.n_classes)
        seen = (label_count + predicted_count) > 0
        macro_f1 = float((2 * true_positive[seen] / (label_count[seen] + predicted_count[seen])).mean())
        aurocs = []
        for label, order, first, last, positive in zip(self.classes, self.order, self.group_first,
                                                       self.group_last, self.positive_sorted, strict=True):
            n_positive = label_count[label]
            if n_positive in (0, n):  # not drawn, or the only class drawn: no AUROC for this class here
                continue
            drawn = counts[order]
            negatives_up_to = np.cumsum(drawn * ~positive)
            below = np.where(first > 0, negatives_up_to[first - 1], 0)
            tied = negatives_up_to[last] - below
            u_statistic = (drawn * positive * (below + 0.5 * tied)).sum()
            aurocs.append(u_statistic / (n_positive * (n - n_positive)))
        if len(aurocs) < 2:
            return [accuracy, macro_f1, np.nan]
        return [accuracy, macro_f1, float(np.mean(aurocs))]

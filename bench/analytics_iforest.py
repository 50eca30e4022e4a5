#!/usr/bin/env python3
"""Baseline for the behavioral-analytics evaluation: scikit-learn's
IsolationForest (n_estimators=100) on the same per-window features the
Portcullis engine computed, trained on the first (normal) week, scored on the
rest. Prints its ROC-AUC beside the engine's, overall and per episode type.

Run by `cargo run --release -p portcullis-analytics --example simulate`, or
by hand: python3 bench/analytics_iforest.py target/analytics-eval/windows.csv

Bench-only dependencies (not needed by the test suite): numpy, scikit-learn
(see bench/requirements.txt).
"""
import csv
import sys

try:
    import numpy as np
    from sklearn.ensemble import IsolationForest
    from sklearn.metrics import roc_auc_score
except ImportError as e:  # a visible skip, not a failure
    print(f"  scikit-learn baseline skipped: {e} (pip install -r bench/requirements.txt)")
    sys.exit(0)


def main(path):
    train, test, labels, kinds, ours = [], [], [], [], []
    with open(path) as f:
        rows = csv.reader(f)
        header = next(rows)
        first = header.index("score") + 1
        for r in rows:
            x = [float(v) for v in r[first:]]
            if r[0] == "train":
                train.append(x)
            elif r[0] == "test":
                test.append(x)
                labels.append(int(r[1]))
                kinds.append(r[2])
                ours.append(float(r[3]))
    train = np.array(train)
    test = np.array(test)
    labels = np.array(labels)
    ours = np.array(ours)
    kinds = np.array(kinds)
    forest = IsolationForest(n_estimators=100, random_state=0, n_jobs=1).fit(train)
    # score_samples: higher is more normal; negate for an anomaly score.
    theirs = -forest.score_samples(test)
    print(f"  scikit-learn IsolationForest(n_estimators=100), trained on {len(train)} first-week windows:")
    print(f"  {'episode':<18} {'portcullis':>10} {'sklearn IF':>10}")
    print(f"  {'overall':<18} {roc_auc_score(labels, ours):>10.4f} {roc_auc_score(labels, theirs):>10.4f}")
    normal = kinds == "normal"
    for kind in sorted(set(kinds) - {"normal"}):
        mask = normal | (kinds == kind)
        a = roc_auc_score(labels[mask], ours[mask])
        b = roc_auc_score(labels[mask], theirs[mask])
        print(f"  {kind:<18} {a:>10.4f} {b:>10.4f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/analytics-eval/windows.csv")

"""Leak-free splits: seeded, stratified by label, one group (patient) on one side; duplicate check.

Why splits are made here rather than by the caller: a split that separates two
views of one patient, or that changes between runs, silently inflates validation
scores.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from fracture.data.records import SPLITS, Record

__all__ = ["make_splits", "find_duplicates", "stratified_sample"]

logger = logging.getLogger(__name__)


def make_splits(
    labels: Sequence[int],
    groups: Sequence[str],
    fractions: Mapping[str, float],
    *,
    seed: int = 0,
) -> list[str]:
    """Assign each item to ``train`` or one of ``fractions``' splits, group by group.

    Groups are split, not images, so one patient's views never straddle a split;
    each group is stratified by its maximum label (a patient with any fracture
    counts as fractured). Fractions are of the groups still unassigned in the
    order given, so ``{"test": 0.1, "val": 0.15}`` takes 10% then 15% of the total.
    Deterministic for a given seed and input order.
    """
    from sklearn.model_selection import train_test_split

    group_label: dict[str, int] = {}
    for label, group in zip(labels, groups):
        group_label[group] = max(label, group_label.get(group, 0))
    remaining = sorted(group_label)
    target: dict[str, str] = {}
    share_left = 1.0
    for name, fraction in fractions.items():
        if fraction <= 0:
            continue
        share = fraction / share_left
        share_left -= fraction
        if len(remaining) < 2:
            logger.warning("Too few groups to make a %s split; it stays empty", name)
            break
        n_take = min(len(remaining) - 1, max(1, round(share * len(remaining))))
        y = [group_label[g] for g in remaining]
        try:
            keep, take = train_test_split(
                remaining, test_size=n_take, stratify=y, random_state=seed
            )
        except ValueError:
            # Stratifying needs two groups per class on each side; a toy dataset has not.
            logger.warning(
                "Too few groups per class to stratify the %s split; splitting at random", name
            )
            keep, take = train_test_split(remaining, test_size=n_take, random_state=seed)
        for group in take:
            target[group] = name
        remaining = sorted(keep)
    return [target.get(group, "train") for group in groups]


def stratified_sample(records: Sequence[Record], limit: int, seed: int = 0) -> list[Record]:
    """At most ``limit`` records with the same share of fractured images, seeded, sorted by path.

    For checks and calibrations that must see both classes in their usual
    proportion without using every image (at least one of each when possible).
    """
    import numpy as np

    if limit >= len(records):
        return list(records)
    rng = np.random.default_rng(seed)
    positives = [r for r in records if r.label == 1]
    negatives = [r for r in records if r.label == 0]
    n_pos = max(1, round(limit * len(positives) / len(records)))
    n_pos = min(n_pos, len(positives), limit - 1) if negatives else min(limit, len(positives))
    n_neg = min(limit - n_pos, len(negatives))
    chosen = [positives[i] for i in rng.choice(len(positives), n_pos, replace=False)]
    chosen += [negatives[i] for i in rng.choice(len(negatives), n_neg, replace=False)]
    return sorted(chosen, key=lambda r: str(r.path))


def find_duplicates(records: Iterable[Record]) -> list[tuple[Path, Path]]:
    """Pairs of files with identical content (SHA-256) that sit in different splits.

    A copy of a training image in validation or test inflates every score
    computed there; published datasets do contain such copies. Only files whose
    size matches a file in another split are hashed, so the check stays fast.
    """
    records = list(records)
    by_size: dict[int, list[Record]] = defaultdict(list)
    for record in records:
        try:
            by_size[record.path.stat().st_size].append(record)
        except OSError as exc:
            logger.warning("Cannot read %s: %s", record.path, exc)
    by_digest: dict[str, list[Record]] = defaultdict(list)
    for same_size in by_size.values():
        if len({record.split for record in same_size}) < 2:
            continue
        for record in same_size:
            try:
                digest = hashlib.sha256(record.path.read_bytes()).hexdigest()
            except OSError as exc:
                logger.warning("Cannot read %s: %s", record.path, exc)
                continue
            by_digest[digest].append(record)
    pairs: list[tuple[Path, Path]] = []
    for same in by_digest.values():
        same.sort(key=lambda r: (SPLITS.index(r.split) if r.split in SPLITS else 99, r.path))
        for i, first in enumerate(same):
            for second in same[i + 1 :]:
                if first.split != second.split:
                    pairs.append((first.path, second.path))
    return sorted(pairs)

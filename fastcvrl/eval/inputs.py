"""Evaluation's inputs checked against each other before any model work: the config's eval keys, and the
training and test splits' labels.

    check_eval_config(cfg)                                   # ConfigError naming the key
    splits = match_splits(train_manifest, test_manifest)    # test labels in the training split's numbering

Labels are numbers in a manifest and names in the ``classes.txt`` beside it (``python -m fastcvrl.prepare``
writes both). A test split prepared on its own numbers its classes by what it holds, so a class missing from
it shifts every later label: the two ``classes.txt`` are compared by name and the test labels renumbered to
the training split's (with a message). A test class (or, without ``classes.txt``, a test label) the training
split never had is an error naming it: the probe cannot predict it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from dali_pipelines.manifest import ManifestError, VideoEntry, read_classes, read_manifest
from fastcvrl.config import Config, validate
from fastcvrl.eval.weights import EvalError

__all__ = ["check_eval_config", "read_split", "Splits", "match_splits"]


def check_eval_config(cfg: Config) -> None:
    """The eval keys a run depends on, checked against the domains and relations declared with them in
    ``fastcvrl.config`` (one ``ConfigError`` naming the key); ``load_config`` already checks every key."""
    validate(cfg, sections=("eval",))


def read_split(manifest: str) -> list[VideoEntry]:
    try:
        return read_manifest(manifest)
    except ManifestError as e:
        raise EvalError(str(e)) from None


def _classes(manifest: str) -> tuple[list[str] | None, Path]:
    path = Path(manifest).parent / "classes.txt"
    return (read_classes(path) if path.is_file() else None), path


def _names(labels: list[int], names: list[str] | None) -> str:
    shown = [f"{v} ({names[v]})" if names and v < len(names) else str(v) for v in labels[:5]]
    return ", ".join(shown) + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")


@dataclass
class Splits:
    """The two splits, test labels in the training split's numbering; ``num_classes`` the probe's outputs."""

    train: list[VideoEntry]
    test: list[VideoEntry]
    num_classes: int
    class_names: list[str] | None
    remapped: bool


def match_splits(train_manifest: str, test_manifest: str, *, log: Callable[[str], None] = print) -> Splits:
    """Read both manifests and put the test labels in the training split's numbering (by class name, where
    both have ``classes.txt``); raise ``EvalError`` for test classes or labels the training split lacks."""
    train, test = read_split(train_manifest), read_split(test_manifest)
    train_names, train_path = _classes(train_manifest)
    test_names, test_path = _classes(test_manifest)
    for entries, names, manifest, path in (
        (train, train_names, train_manifest, train_path),
        (test, test_names, test_manifest, test_path),
    ):
        if names is not None:
            beyond = sorted({e.label for e in entries if e.label >= len(names)})
            if beyond:
                raise EvalError(
                    f"{manifest}: label(s) {_names(beyond, None)} beyond the {len(names)} classes of {path}"
                )
    remapped = False
    if train_names is not None and test_names is not None and test_names != train_names:
        index = {n: i for i, n in enumerate(train_names)}
        used = sorted({e.label for e in test})
        unknown = [v for v in used if test_names[v] not in index]
        if unknown:
            raise EvalError(
                f"{test_manifest}: test class(es) {_names(unknown, test_names)} are not among the "
                f"{len(train_names)} classes of {train_path}"
            )
        new = {v: index[test_names[v]] for v in used}
        if any(k != v for k, v in new.items()):
            test = [replace(e, label=new[e.label]) for e in test]
            remapped = True
            log(
                f"eval: {test_path} numbers the classes differently from {train_path} ({len(test_names)} vs "
                f"{len(train_names)} classes); test labels renumbered by class name"
            )
    elif (train_names is None) != (test_names is None):
        missing = train_path if train_names is None else test_path
        log(f"eval: no {missing}: the two splits' labels are compared by number, not by class name")
    seen = {e.label for e in train}
    absent = sorted({e.label for e in test} - seen)
    if absent:
        raise EvalError(
            f"{test_manifest}: test label(s) {_names(absent, train_names or test_names)} never occur in "
            f"the training split {train_manifest}"
        )
    num_classes = max(max(seen) + 1, len(train_names or ()))
    return Splits(train, test, num_classes, train_names, remapped)

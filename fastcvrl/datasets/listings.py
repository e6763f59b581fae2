"""Where a video collection lists its files and labels: the inputs ``python -m fastcvrl.prepare`` reads.

Formats:
- ``folder``: ``SRC/<class>/**/<video>``; classes are the sub-folders holding videos, sorted by name.
- ``kinetics``: an annotation CSV ``label,youtube_id,time_start,time_end,split`` and a folder (``--videos``)
  holding ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` (the official downloader's names) or
  ``<youtube_id>.<ext>``,
  found anywhere below it.
- ``ucf101``: ``trainlist0N.txt`` / ``testlist0N.txt`` with ``classInd.txt`` beside it; video paths are
  relative to ``--videos`` (the folder holding ``ApplyEyeMakeup/`` ...).
- ``hmdb51``: the folder of ``<class>_test_split<N>.txt`` files (``--split-id N``, ``--subset train|test``),
  videos at ``--videos/<class>/<file>``.
- ``list``: lines ``path label`` (space, tab or comma between; ``#`` comments); labels are integers or class
  names; paths relative to ``--videos`` or else to the list's folder.
A ``classes`` list (a ``classes.txt`` from an earlier run) fixes the label order, so that a validation split
gets the same labels as its training split.
"""

from __future__ import annotations

import csv
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

VIDEO_EXTENSIONS = {
    ".mp4",
    ".m4v",
    ".mov",
    ".avi",
    ".webm",
    ".mkv",
    ".mpg",
    ".mpeg",
    ".flv",
    ".wmv",
    ".3gp",
    ".ogv",
    ".ts",
    ".mts",
}
FORMATS = ("folder", "kinetics", "ucf101", "hmdb51", "list")


class SourceError(ValueError):
    """A source that cannot be read; the message names the file or folder at fault."""


@dataclass(frozen=True)
class Item:
    path: str  # absolute; may not exist (then probing rejects it as missing)
    label: int


@dataclass
class Source:
    format: str
    items: list[Item]
    classes: list[str]
    notes: list[str]  # what was chosen or skipped, for the user
    rejected: list[tuple[str, str, str]] = field(default_factory=list)  # (path, reason, detail): never listed


def class_name_problem(name: str) -> str:
    """Why ``name`` cannot be a class name ("" when it can): ``classes.txt`` holds one name per line and must
    read back exactly, so no control characters (a newline would split the name), no line or paragraph
    separators, not empty or only white space, and valid UTF-8 (a folder name may not be)."""
    if not name.strip():
        return "is empty or only white space"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 text"
    for c in name:
        if unicodedata.category(c) in ("Cc", "Zl", "Zp"):
            return f"holds the control character U+{ord(c):04X}"
    return ""


def special_kind(p: Path) -> str:
    """ "FIFO", "socket", "character device", "block device" for such a file (followed through links),
    else ""."""
    try:
        mode = p.stat().st_mode
    except OSError:
        return ""
    for test, kind in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return kind
    return ""


def _cut(value: str, limit: int = 120) -> str:
    """``repr(value)`` of at most about ``limit`` characters: an error quoting a line stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown_name(name: str) -> str:
    return repr(os.fsencode(name).decode("utf-8", "backslashreplace"))


def _is_video(p: Path) -> bool:
    """A video file by its extension, or a broken symbolic link with a video's name (listed, so that probing
    rejects it with its reason instead of leaving it out unseen)."""
    return (
        p.suffix.lower() in VIDEO_EXTENSIONS
        and not p.name.startswith(".")
        and (p.is_file() or (p.is_symlink() and not p.exists()))
    )


def _absolute(p: Path) -> str:
    """``p`` resolved; a broken symbolic link (a loop, or a link to nothing) or a link to a special file keeps
    its own name, so the user reads the file they listed, not where it leads (a loop has no end to resolve
    to)."""
    if p.is_symlink() and (not p.exists() or special_kind(p)):  # a link to a device: named as listed too
        try:
            return str(p.parent.resolve() / p.name)
        except RuntimeError:  # a loop in the folders above
            return str(p.absolute())
    try:
        return str(p.resolve())
    except RuntimeError:  # a loop further up the path
        return str(p.absolute())


def _labels_for(names: list[str], classes: list[str] | None, where: str) -> tuple[list[str], dict[str, int]]:
    """Class order: the given ``classes`` (every name must be in it), else the sorted names."""
    if classes is None:
        classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise SourceError(f"{where}: class(es) not in the given class list: {', '.join(unknown[:10])}")
    return classes, index


def detect_format(src: Path) -> tuple[str, str]:
    """Guess the format of ``src``; returns ``(format, why)``."""
    if src.is_dir():
        if any(src.glob("*_test_split[0-9].txt")):
            return "hmdb51", "folder of *_test_splitN.txt files"
        if (src / "classInd.txt").is_file():
            raise SourceError(
                f"{src} holds classInd.txt: pass the split file itself, e.g. {src / 'trainlist01.txt'}"
            )
        return "folder", "a folder: one sub-folder per class"
    if re.fullmatch(r"(train|test)list\d+\.txt", src.name):
        return "ucf101", f"{src.name} is a UCF-101 split file"
    if src.suffix.lower() == ".csv":
        with open(src, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        if "youtube_id" in [h.strip() for h in header]:
            return "kinetics", "CSV with a youtube_id column"
        return "list", "CSV without a youtube_id column: read as path,label"
    return "list", "a text file: read as 'path label' lines"


def read_folder(root: Path, classes: list[str] | None = None, exclude: Path | None = None) -> Source:
    notes: list[str] = []
    rejected: list[tuple[str, str, str]] = []
    exclude = exclude.resolve() if exclude else None
    found: dict[str, list[Path]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if exclude is not None and (d.resolve() == exclude or exclude in d.resolve().parents):
            notes.append(f"skipped {d}: it is the output folder")
            continue
        for p in sorted(d.rglob("*")):
            kind = special_kind(p)
            if kind:  # a FIFO, socket or device (or a link to one): never a video, never left out unseen
                link = f" (a symbolic link to {os.readlink(p)})" if p.is_symlink() else ""
                rejected.append((str(p), "special file", f"a {kind}{link}, not a regular file"))
        videos = sorted(
            p
            for p in d.rglob("*")
            if _is_video(p) and not (exclude and exclude in Path(_absolute(p)).parents)
        )
        problem = class_name_problem(d.name)
        if videos and problem:
            why = f"the class folder name {_shown_name(d.name)} {problem}: rename the folder"
            rejected.extend((_absolute(p), "bad class name", why) for p in videos)
            continue
        if videos:
            found[d.name] = videos
        others = [p for p in d.rglob("*") if p.is_file() and p.suffix.lower() not in VIDEO_EXTENSIONS]
        if others:
            notes.append(f"ignored {len(others)} non-video file(s) in {d} (e.g. {others[0].name})")
    loose = [p for p in root.iterdir() if _is_video(p)]
    if loose:
        notes.append(f"ignored {len(loose)} video(s) directly in {root}, outside any class folder")
    if not found:
        bad = f" ({len(rejected)} file(s) rejected: {rejected[0][2]})" if rejected else ""
        raise SourceError(
            f"{root}: no class sub-folders with video files ({', '.join(sorted(VIDEO_EXTENSIONS))}){bad}"
        )
    classes, index = _labels_for(list(found), classes, str(root))
    items = [Item(_absolute(p), index[c]) for c in sorted(found, key=index.get) for p in found[c]]
    return Source("folder", items, classes, notes, rejected)


def read_kinetics(
    csv_path: Path, videos: Path, subset: str | None = None, classes: list[str] | None = None
) -> Source:
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    need = {"label", "youtube_id", "time_start", "time_end"}
    if not rows or not need <= set(rows[0]):
        raise SourceError(
            f"{csv_path}: expected the columns {','.join(sorted(need))} (test CSVs without labels cannot be "
            "used)"
        )
    all_labels = [r["label"].strip() for r in rows]
    classes, index = _labels_for(all_labels, classes, str(csv_path))
    notes = []
    if subset:
        rows = [r for r in rows if r.get("split", "").strip() == subset]
        notes.append(f"{len(rows)} rows with split == {subset}")
        if not rows:
            raise SourceError(f"{csv_path}: no rows with split == {subset!r}")
    by_stem: dict[str, Path] = {}
    for p in videos.rglob("*"):
        if _is_video(p):
            by_stem.setdefault(p.stem, p)
    items = []
    for r in rows:
        yid = r["youtube_id"].strip()
        stem = f"{yid}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
        p = by_stem.get(stem) or by_stem.get(yid) or videos / f"{stem}.mp4"  # absent: rejected as missing
        items.append(Item(_absolute(p), index[r["label"].strip()]))
    return Source("kinetics", items, classes, notes)


def read_ucf101(list_path: Path, videos: Path, classes: list[str] | None = None) -> Source:
    ind = list_path.parent / "classInd.txt"
    if classes is None:
        if not ind.is_file():
            raise SourceError(f"{ind} not found: UCF-101 split files need classInd.txt beside them")
        pairs = [line.split() for line in ind.read_text().splitlines() if line.strip()]
        classes = [name for _, name in sorted(pairs, key=lambda p: int(p[0]))]
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for lineno, line in enumerate(list_path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        rel = parts[0]
        name = rel.replace("\\", "/").split("/")[0]
        if name not in index:
            raise SourceError(f"{list_path}:{lineno}: class {_cut(name)} is not in {ind}")
        if len(parts) > 1 and int(parts[1]) - 1 != index[name]:
            raise SourceError(
                f"{list_path}:{lineno}: label {parts[1]} disagrees with classInd.txt for {name}"
            )
        items.append(Item(_absolute(videos / rel), index[name]))
    return Source("ucf101", items, classes, [])


def read_hmdb51(
    split_dir: Path, videos: Path, split_id: int = 1, subset: str = "train", classes: list[str] | None = None
) -> Source:
    code = {"train": "1", "test": "2"}.get(subset)
    if code is None:
        raise SourceError(f"HMDB-51 --subset must be train or test, got {subset!r}")
    files = sorted(split_dir.glob(f"*_test_split{split_id}.txt"))
    if not files:
        raise SourceError(f"{split_dir}: no *_test_split{split_id}.txt files")
    names = [f.name[: -len(f"_test_split{split_id}.txt")] for f in files]
    classes, index = _labels_for(names, classes, str(split_dir))
    items = []
    for f, name in zip(files, names):
        for line in f.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == code:
                items.append(Item(_absolute(videos / name / parts[0]), index[name]))
    return Source("hmdb51", items, classes, [f"split {split_id}, {subset} subset"])


def read_list(list_path: Path, videos: Path | None = None, classes: list[str] | None = None) -> Source:
    base = videos or list_path.parent
    rows: list[tuple[str, str]] = []
    for lineno, line in enumerate(list_path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = re.split(r"[\s,]+(?=[^\s,]+$)", line, maxsplit=1)  # the label is the last field
        if len(parts) != 2 or not parts[0].strip():
            raise SourceError(f"{list_path}:{lineno}: expected 'path label', got {_cut(line)}")
        path, label = parts[0].strip().rstrip(","), parts[1].strip()
        if lineno == 1 and label.lower() == "label":  # a header row
            continue
        rows.append((path, label))
    if not rows:
        raise SourceError(f"{list_path}: no 'path label' lines")
    labels = [lab for _, lab in rows]
    notes = []
    if all(re.fullmatch(r"\d+", lab) for lab in labels):  # integer labels are used as they are
        count = max(int(lab) for lab in labels) + 1
        if classes is None:
            classes = [str(i) for i in range(count)]
            notes.append("integer labels: class names are the numbers (pass --classes FILE for names)")
        elif count > len(classes):
            raise SourceError(f"{list_path}: label {count - 1} but the class list has {len(classes)} names")
        index = {lab: int(lab) for lab in labels}
    else:
        classes, index = _labels_for(labels, classes, str(list_path))
    items = []
    for path, label in rows:
        p = Path(path)
        p = p if p.is_absolute() else base / p
        items.append(Item(_absolute(p), index[label]))
    return Source("list", items, classes, notes)


def read_source(
    src: Path,
    fmt: str = "auto",
    videos: Path | None = None,
    subset: str | None = None,
    split_id: int = 1,
    classes: list[str] | None = None,
    exclude: Path | None = None,
) -> Source:
    """List the items of ``src`` in ``fmt`` (``auto`` guesses; the choice is the first note)."""
    if not src.exists():
        raise SourceError(f"source not found: {src}")
    if videos is not None and not videos.is_dir():
        raise SourceError(f"--videos folder not found: {videos}")
    why = "as asked"
    if fmt == "auto":
        fmt, why = detect_format(src)
    if fmt not in FORMATS:
        raise SourceError(f"unknown format {fmt!r}; choose auto or one of {', '.join(FORMATS)}")
    want_dir = fmt in ("folder", "hmdb51")
    if src.is_dir() != want_dir:
        raise SourceError(f"format {fmt} needs {'a folder' if want_dir else 'a file'}, got {src}")
    if fmt == "folder":
        source = read_folder(src, classes, exclude)
    elif fmt == "kinetics":
        source = read_kinetics(src, videos or src.parent, subset, classes)
    elif fmt == "ucf101":
        source = read_ucf101(src, videos or src.parent, classes)
    elif fmt == "hmdb51":
        source = read_hmdb51(src, videos or src.parent, split_id, subset or "train", classes)
    else:
        source = read_list(src, videos, classes)
    source.notes.insert(0, f"format: {fmt} ({why})")
    for name in source.classes:  # a folder's bad names are rejected file by file above; here: the lists'
        problem = class_name_problem(name)
        if problem:
            raise SourceError(
                f"{src}: the class name {_shown_name(name)} {problem} (classes.txt holds one name per line)"
            )
    seen: set[str] = set()
    unique = [it for it in source.items if not (it.path in seen or seen.add(it.path))]
    if len(unique) < len(source.items):
        source.notes.append(
            f"{len(source.items) - len(unique)} duplicate path(s) listed; the first label kept"
        )
        source.items = unique
    return source

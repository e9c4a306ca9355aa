"""Readers of face-detection annotation formats into :class:`DetectionSample` records, and the
writer of WIDER FACE prediction files.

Every reader takes the annotation file (or folder), the images root, and ``verify``
(``"none"`` | ``"header"`` | ``"full"``, see :func:`facenas.datamodules.images.probe_image`). Structural
errors (a count line that is not a number, a missing file) raise :class:`DataError` naming the
file and line; bad boxes and unreadable images are counted in the :class:`DataReport`, reported
with their line, and skipped.

Every text file is read as UTF-8 (a byte-order mark at its start is skipped); any other encoding
is a :class:`DataError` naming the file and line. :func:`read_detection` refuses annotations
without a single image entry.

Duplicate image entries (one name in two entries of a file, or in two files of a folder) follow
one rule in every reader: an entry whose boxes repeat an earlier entry's exactly is skipped
(reason ``duplicate_image``, counted as dropped); otherwise its boxes are appended to the first
entry's image, in file order (reason ``duplicate_image``, counted as repaired), and their
``source_index`` continues the first entry's numbering.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from facenas.core.progress import track
from facenas.core.registry import Registry

from ..images import sanitize_boxes, verify_sample_image
from ..records import DataError, DataReport, DetectionSample

WIDER_ATTRIBUTES = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")


def _decode_line(raw: bytes, path: Path, number: int) -> str:
    """One line of a UTF-8 text file (a BOM on the first line is dropped); other encodings are
    a :class:`DataError` naming the file and line."""
    if number == 1 and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1}); save the file as UTF-8",
            path,
            number,
        ) from None


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        raise DataError("annotation file not found", path)
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            yield number, _decode_line(raw, path, number).strip()


class _NotUTF8(DataError):
    """A text file that is not UTF-8: ``problem`` is the message without the file and line."""

    def __init__(self, problem: str, file: Path, line: int) -> None:
        super().__init__(problem, file, line)
        self.problem = problem


def _read_text(path: Path) -> str:
    """A whole UTF-8 text file (BOM dropped), or a :class:`DataError` naming file and line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise _NotUTF8(
            f"not UTF-8 text (byte {raw[exc.start]:#04x} at column {column}); save the file as UTF-8", path, line
        ) from None


def _numbers(text: str) -> list[float] | None:
    """The numbers of a line, or None when a token is not a number."""
    try:
        return [float(v) for v in text.split()]
    except ValueError:
        return None


def _is_record(text: str) -> bool:
    """A line of four or more numbers: a box (or ellipse) line, never an image name."""
    values = _numbers(text)
    return values is not None and len(values) >= 4


def _is_name(text: str) -> bool:
    """A single token that is not a number: an image name, never a box line."""
    return len(text.split()) == 1 and _numbers(text) is None


def _box_values(text: str, path: Path, line: int, report: DataReport, name: str, minimum: int) -> list[float] | None:
    """The numbers of one box line, or None (reported as malformed and counted) when there are
    fewer than ``minimum`` or they are not numbers."""
    try:
        values = [float(v) for v in text.split()]
    except ValueError:
        values = []
    if len(values) < minimum:
        report.add(path, line, "malformed_box", f"{name}: {text!r}")
        report.boxes_read += 1
        return None
    return values


def _counted_blocks(path: Path, items: str) -> Iterator[tuple[int, str, list[tuple[int, str]]]]:
    """Blocks of ``name`` / ``N`` / N numbered lines (WIDER gt, FDDB folds): yields the name's
    line number, the name and its N body lines. A block with N = 0 may be followed by one line
    of zeros, as in the official WIDER files."""
    lines = list(_numbered_lines(path))
    i = 0
    previous: tuple[str, int, int] | None = None  # the last block's name, count line and count
    while i < len(lines):
        number, name = lines[i]
        if not name:
            i += 1
            continue
        if _is_record(name):
            if previous is None:
                raise DataError(f"expected an image name, found {name!r}", path, number)
            last, last_count_line, last_count = previous
            raise DataError(
                f"{last!r} announces {last_count} {items} but more follow (line {number} is not an image name: "
                f"{name!r})",
                path,
                last_count_line,
            )
        if i + 1 >= len(lines):
            raise DataError(f"image {name!r} has no count line", path, number)
        count_line, count_text = lines[i + 1]
        try:
            count = int(count_text)
        except ValueError:
            raise DataError(
                f"expected the number of {items} of {name!r}, found {count_text!r}", path, count_line
            ) from None
        if count < 0:
            raise DataError(f"negative count {count} for {name!r}", path, count_line)
        body = lines[i + 2 : i + 2 + count]
        for k, (body_line, text) in enumerate(body):
            if _is_name(text):
                raise DataError(
                    f"{name!r} announces {count} {items} but the next image name, {text!r} (line {body_line}), "
                    f"comes after {k}",
                    path,
                    count_line,
                )
        if len(body) < count:
            raise DataError(f"{name!r} announces {count} {items} but the file ends after {len(body)}", path, count_line)
        previous = (name, count_line, count)
        i += 2 + count
        if count == 0 and i < len(lines) and lines[i][1] and all(v == "0" for v in lines[i][1].split()):
            i += 1
        yield number, name, body


def _finish(
    sample: DetectionSample, path: Path, line: int | None, verify: str, report: DataReport
) -> DetectionSample | None:
    report.images_read += 1
    if not verify_sample_image(sample, verify, report, path, line):
        report.boxes_read += len(sample)
        return None
    return sanitize_boxes(sample, report, path)


def _per_box(sample: DetectionSample, values: np.ndarray | None, fill: float) -> np.ndarray:
    return values if values is not None else np.full(len(sample), fill)


def _merged(first: DetectionSample, more: DetectionSample, offset: int) -> DetectionSample:
    """``first`` with the boxes of ``more`` (a later entry of the same image) appended; the
    later entry's ``source_index`` is shifted by ``offset`` (the earlier entries' box count)."""
    landmarks = None
    if first.landmarks is not None or more.landmarks is not None:
        landmarks = np.concatenate(
            [
                s.landmarks if s.landmarks is not None else np.full((len(s), 5, 2), np.nan, np.float32)
                for s in (first, more)
            ]
        )
    keys = dict.fromkeys([*first.attributes, *more.attributes])
    return DetectionSample(
        image=first.image,
        name=first.name,
        boxes=np.concatenate([first.boxes, more.boxes]),
        ignore=np.concatenate([first.ignore, more.ignore]),
        landmarks=landmarks,
        attributes={
            k: [*first.attributes.get(k, [None] * len(first)), *more.attributes.get(k, [None] * len(more))]
            for k in keys
        },
        width=first.width,
        height=first.height,
        lines=None
        if first.lines is None and more.lines is None
        else np.concatenate([_per_box(first, first.lines, -1), _per_box(more, more.lines, -1)]).astype(int),
        source_index=None
        if first.source_index is None and more.source_index is None
        else np.concatenate(
            [_per_box(first, first.source_index, -1), _per_box(more, more.source_index, -1) + offset]
        ).astype(int),
    )


class _Images:
    """The samples a reader keeps, one per image name: a later entry of a name already seen is
    skipped when its boxes repeat the first entry's exactly, else merged into it (see the
    module docstring); either way it is reported with its file and line."""

    def __init__(self, report: DataReport) -> None:
        self.samples: list[DetectionSample] = []
        self.report = report
        self._first: dict[str, list] = {}  # name -> [index, where, boxes in the source so far]

    def add(self, sample: DetectionSample | None, file: Path, line: int | None, source_boxes: int = 0) -> None:
        """Keep ``sample`` (None: skipped by the reader); ``source_boxes``: its entry's box count
        in the source file, the offset of a later entry's ``source_index``."""
        if sample is None:
            return
        first = self._first.get(sample.name)
        if first is None:
            self._first[sample.name] = [len(self.samples), f"{file}:{line}" if line else str(file), source_boxes]
            self.samples.append(sample)
            return
        index, where, offset = first
        kept = self.samples[index]
        if np.array_equal(kept.boxes, sample.boxes) and np.array_equal(kept.ignore, sample.ignore):
            self.report.add(file, line, "duplicate_image", f"{sample.name}: repeats the entry at {where} (skipped)")
            return
        self.report.add(
            file,
            line,
            "duplicate_image",
            f"{sample.name}: a second entry (first at {where}); its {len(sample)} boxes are merged into that image",
            bad=False,
        )
        self.samples[index] = _merged(kept, sample, offset)
        first[2] += source_boxes


def _attribute(value: float) -> str | None:
    """A WIDER attribute flag as its label, or None when it is not an integer."""
    return str(int(value)) if math.isfinite(value) and value == int(value) else None


def _xywh_to_xyxy(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32).reshape(-1, 4)
    return np.concatenate([values[:, :2], values[:, :2] + values[:, 2:]], axis=1)


def read_wider(
    annotations: str | Path,
    images: str | Path | None = None,
    *,
    verify: str = "header",
    report: DataReport | None = None,
) -> list[DetectionSample]:
    """Read WIDER FACE's official ``wider_face_*_bbx_gt.txt``.

    Blocks of ``name`` / ``N`` / N lines of ``x y w h blur expression illumination invalid
    occlusion pose`` (an image with N = 0 is followed by one line of zeros). ``invalid`` boxes
    become ignore regions; the other five flags are kept as per-box attributes.

    Args:
        annotations: the gt txt file.
        images: the folder holding ``<event>/<name>.jpg`` (default: ``../WIDER_*/images``
            is not guessed; without it image paths are the names themselves).
    """
    path = Path(annotations)
    root = Path(images) if images is not None else Path()
    report = report if report is not None else DataReport(source=str(path))
    samples = _Images(report)
    for number, name, body in _counted_blocks(path, "boxes"):
        boxes, ignore, line_numbers, index, attrs = [], [], [], [], {k: [] for k in WIDER_ATTRIBUTES if k != "invalid"}
        for k, (box_line, text) in enumerate(body):
            values = _box_values(text, path, box_line, report, name, 4)
            if values is None:
                continue
            flags = (values[4:10] + [0.0] * 6)[:6]
            labels = [_attribute(v) for v in flags]
            bad = [f"{key}={v:g}" for key, v, label in zip(WIDER_ATTRIBUTES, flags, labels) if label is None]
            if bad:
                report.add(
                    path,
                    box_line,
                    "bad_attribute",
                    f"{name}: {', '.join(bad)} is not an integer; the box is kept as an ignore region",
                    bad=False,  # kept (as an ignore region), not dropped: not against max_bad_fraction
                )
            boxes.append(values[:4])
            ignore.append(bool(bad) or labels[3] != "0")
            line_numbers.append(box_line)
            index.append(k)
            for key, label in zip(WIDER_ATTRIBUTES, labels):
                if key != "invalid":
                    attrs[key].append(label)
        sample = DetectionSample(
            image=str(root / name),
            name=name,
            boxes=_xywh_to_xyxy(np.array(boxes)),
            ignore=np.array(ignore, dtype=bool),
            attributes=attrs,
            lines=np.array(line_numbers, dtype=int),
            source_index=np.array(index, dtype=int),
        )
        samples.add(_finish(sample, path, number, verify, report), path, number, len(body))
    return samples.samples


def write_wider_annotations(
    root: str | Path, images: Iterable[tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None]]
) -> None:
    """Write the annotations of a folder of images in both formats the readers take:
    ``wider_face_bbx_gt.txt`` (WIDER's official format, ignored boxes flagged ``invalid``) and
    ``label.txt`` (RetinaFace's, with the 5 landmarks; -1 where a face has none).

    Args:
        root: the folder (its ``images/`` holds the images).
        images: per image ``(name under images/, boxes (N, 4) xyxy, ignore (N,) bool or None,
            landmarks (N, 5, 2) with NaN where absent, or None)``.
    """
    gt, labels = [], []
    for name, boxes, ignore, landmarks in images:
        ignore = np.zeros(len(boxes), bool) if ignore is None else ignore
        landmarks = np.full((len(boxes), 5, 2), np.nan, np.float32) if landmarks is None else landmarks
        gt += [name, str(len(boxes))]
        labels.append(f"# {name}")
        for (x1, y1, x2, y2), flag, marks in zip(boxes, ignore, landmarks):
            box = f"{x1:.2f} {y1:.2f} {x2 - x1:.2f} {y2 - y1:.2f}"
            gt.append(f"{box} 0 0 0 {int(flag)} 0 0")
            points = np.where(np.isfinite(marks), marks, -1.0)
            labels.append(f"{box} " + " ".join(f"{x:.2f} {y:.2f} 0.0" for x, y in points) + " 1.0")
        if len(boxes) == 0:
            gt.append("0 0 0 0 0 0 0 0 0 0")
    Path(root, "wider_face_bbx_gt.txt").write_text("\n".join(gt) + "\n")
    Path(root, "label.txt").write_text("\n".join(labels) + "\n")


def read_retinaface(
    annotations: str | Path,
    images: str | Path | None = None,
    *,
    verify: str = "header",
    report: DataReport | None = None,
) -> list[DetectionSample]:
    """Read the RetinaFace ``label.txt`` variant of WIDER FACE.

    ``# <event>/<name>.jpg`` starts an image; each following line is ``x y w h`` then, optionally,
    five landmarks as ``x y flag`` triples and a score. Landmarks given as -1 are absent (NaN).
    """
    path = Path(annotations)
    root = Path(images) if images is not None else Path()
    report = report if report is not None else DataReport(source=str(path))
    samples = _Images(report)
    current: dict | None = None

    def flush() -> None:
        if current is None:
            return
        sample = DetectionSample(
            image=str(root / current["name"]),
            name=current["name"],
            boxes=_xywh_to_xyxy(np.array(current["boxes"])),
            ignore=np.zeros(len(current["boxes"]), dtype=bool),
            landmarks=np.array(current["landmarks"]).reshape(-1, 5, 2),
            lines=np.array(current["lines"], dtype=int),
            source_index=np.arange(len(current["boxes"])),
        )
        samples.add(
            _finish(sample, path, current["line"], verify, report), path, current["line"], len(current["boxes"])
        )

    for number, text in _numbered_lines(path):
        if not text:
            continue
        if text.startswith("#"):
            flush()
            words = text[1:].split()
            if not words:
                raise DataError("'#' without an image name", path, number)
            current = {"name": words[0], "line": number, "boxes": [], "landmarks": [], "lines": []}
            continue
        if current is None:
            raise DataError("box line before the first '# <image>' line", path, number)
        values = _box_values(text, path, number, report, current["name"], 4)
        if values is None:
            continue
        marks = np.full((5, 2), np.nan, dtype=np.float32)
        if len(values) >= 19:
            points = np.array(values[4:19], dtype=np.float32).reshape(5, 3)[:, :2]
            if not (points == -1).all():  # RetinaFace writes -1 for every coordinate of a face without landmarks
                marks = points
        current["boxes"].append(values[:4])
        current["landmarks"].append(marks)
        current["lines"].append(number)
    flush()
    return samples.samples


def _ellipse_box(ra: float, rb: float, theta: float, cx: float, cy: float) -> list[float]:
    """Axis-aligned box enclosing an ellipse with semi-axes ``ra`` (at angle ``theta``) and ``rb``."""
    half_w = math.sqrt((ra * math.cos(theta)) ** 2 + (rb * math.sin(theta)) ** 2)
    half_h = math.sqrt((ra * math.sin(theta)) ** 2 + (rb * math.cos(theta)) ** 2)
    return [cx - half_w, cy - half_h, cx + half_w, cy + half_h]


def read_fddb(
    annotations: str | Path,
    images: str | Path | None = None,
    *,
    verify: str = "header",
    report: DataReport | None = None,
    extension: str = ".jpg",
) -> list[DetectionSample]:
    """Read FDDB ``FDDB-fold-XX-ellipseList.txt`` files (a file or a folder of them).

    Blocks of ``name`` (no extension) / ``N`` / N lines of ``major_radius minor_radius angle
    center_x center_y 1``; each ellipse becomes its enclosing box.
    """
    path = Path(annotations)
    files = sorted(path.glob("*ellipseList.txt")) if path.is_dir() else [path]
    if not files:
        raise DataError("no *ellipseList.txt files in folder", path)
    root = Path(images) if images is not None else Path()
    report = report if report is not None else DataReport(source=str(path))
    samples = _Images(report)
    for file in files:
        for number, name, body in _counted_blocks(file, "ellipses"):
            boxes, line_numbers = [], []
            for box_line, text in body:
                values = _box_values(text, file, box_line, report, name, 5)
                if values is None:
                    continue
                boxes.append(_ellipse_box(*values[:5]))
                line_numbers.append(box_line)
            image_name = name + extension
            sample = DetectionSample(
                image=str(root / image_name),
                name=image_name,
                boxes=np.array(boxes),
                ignore=np.zeros(len(boxes), bool),
                lines=np.array(line_numbers, dtype=int),
                source_index=np.arange(len(boxes)),
            )
            samples.add(_finish(sample, file, number, verify, report), file, number, len(body))
    return samples.samples


def _parse_xml(file: Path) -> ET.Element:
    try:
        return ET.parse(file).getroot()
    except ET.ParseError as exc:
        raise DataError(f"invalid XML: {exc}", file, exc.position[0]) from None
    except FileNotFoundError:
        raise DataError("annotation file not found", file) from None


def read_voc(
    annotations: str | Path,
    images: str | Path | None = None,
    *,
    verify: str = "header",
    report: DataReport | None = None,
    classes: Iterable[str] | None = None,
) -> list[DetectionSample]:
    """Read PASCAL VOC XML annotations (one ``.xml`` file or a folder of them).

    ``<object><name>`` filters by ``classes`` when given; ``<difficult>1`` boxes become ignore
    regions. Coordinates are taken as given (VOC's 1-based pixel indices are not shifted).
    """
    path = Path(annotations)
    files = sorted(path.glob("*.xml")) if path.is_dir() else [path]
    if not files:
        raise DataError("no .xml files in folder", path)
    root = Path(images) if images is not None else Path()
    keep_classes = None if classes is None else set(classes)
    report = report if report is not None else DataReport(source=str(path))
    samples = _Images(report)
    for file in files:
        xml = _parse_xml(file)
        name = xml.findtext("filename")
        if not name:
            raise DataError("missing <filename>", file)
        boxes, ignore, index = [], [], []
        for k, obj in enumerate(xml.iter("object")):
            if keep_classes is not None and (obj.findtext("name") or "").strip() not in keep_classes:
                continue
            bnd = obj.find("bndbox")
            try:
                boxes.append([float(bnd.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")])  # type: ignore[union-attr, arg-type]
            except (AttributeError, TypeError, ValueError):
                report.add(file, None, "malformed_box", f"{name}: object {k} has no numeric <bndbox>")
                report.boxes_read += 1
                continue
            ignore.append((obj.findtext("difficult") or "0").strip() == "1")
            index.append(k)
        size = xml.find("size")
        sample = DetectionSample(
            image=str(root / name),
            name=name,
            boxes=np.array(boxes),
            ignore=np.array(ignore, bool),
            source_index=np.array(index, dtype=int),
        )
        if size is not None and verify == "none":
            sample.width, sample.height = (
                int(float(size.findtext("width") or 0)) or None,
                int(float(size.findtext("height") or 0)) or None,
            )
        samples.add(_finish(sample, file, None, verify, report), file, None, len(xml.findall(".//object")))
    return samples.samples


# dlib's 68-point scheme (iBUG 300-W) -> the 5 points RetinaFace uses
_EYE_L, _EYE_R, _NOSE, _MOUTH_L, _MOUTH_R = range(36, 42), range(42, 48), 30, 48, 54


def _five_points(parts: dict[int, tuple[float, float]]) -> np.ndarray:
    if len(parts) == 5:
        return np.array([parts[k] for k in sorted(parts)], dtype=np.float32)
    if len(parts) >= 68:
        left = np.mean([parts[k] for k in _EYE_L], axis=0)
        right = np.mean([parts[k] for k in _EYE_R], axis=0)
        return np.array([left, right, parts[_NOSE], parts[_MOUTH_L], parts[_MOUTH_R]], dtype=np.float32)
    return np.full((5, 2), np.nan, dtype=np.float32)


def read_dlib(
    annotations: str | Path,
    images: str | Path | None = None,
    *,
    verify: str = "header",
    report: DataReport | None = None,
) -> list[DetectionSample]:
    """Read dlib imglab XML (``<image file><box top left width height [ignore]>``), such as dlib's
    PASCAL faces. 68-point or 5-point ``<part>`` landmarks become the 5 RetinaFace points.
    Images are resolved against ``images`` (default: the XML file's folder)."""
    path = Path(annotations)
    xml = _parse_xml(path)
    root = Path(images) if images is not None else path.parent
    report = report if report is not None else DataReport(source=str(path))
    samples = _Images(report)
    for image in xml.iter("image"):
        name = image.get("file")
        if not name:
            raise DataError("<image> without a file attribute", path)
        boxes, ignore, marks = [], [], []
        for k, box in enumerate(image.iter("box")):
            try:
                top, left, w, h = (float(box.get(t)) for t in ("top", "left", "width", "height"))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                report.add(path, None, "malformed_box", f"{name}: box {k}")
                report.boxes_read += 1
                continue
            boxes.append([left, top, left + w, top + h])
            ignore.append(box.get("ignore", "0") == "1")
            parts = {
                int(p.get("name", i)): (float(p.get("x")), float(p.get("y"))) for i, p in enumerate(box.iter("part"))
            }  # type: ignore[arg-type]
            marks.append(_five_points(parts))
        sample = DetectionSample(
            image=str(root / name),
            name=name,
            boxes=np.array(boxes),
            ignore=np.array(ignore, bool),
            landmarks=np.array(marks).reshape(-1, 5, 2) if any(np.isfinite(m).all() for m in marks) else None,
            source_index=np.arange(len(boxes)),
        )
        if verify == "none" and image.get("width"):
            sample.width, sample.height = int(image.get("width")), int(image.get("height"))  # type: ignore[arg-type]
        samples.add(_finish(sample, path, None, verify, report), path, None, len(boxes))
    return samples.samples


def read_coco(
    annotations: str | Path,
    images: str | Path | None = None,
    *,
    verify: str = "header",
    report: DataReport | None = None,
    categories: Iterable[str] | None = None,
) -> list[DetectionSample]:
    """Read COCO JSON (``images``, ``annotations`` with ``bbox`` as x y w h, ``categories``).

    ``iscrowd`` boxes become ignore regions; 5 keypoints (x, y, v triples) become landmarks.
    ``categories`` filters by category name when given.
    """
    path = Path(annotations)
    if not path.is_file():
        raise DataError("annotation file not found", path)
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg}", path, exc.lineno) from None
    for key in ("images", "annotations"):
        if key not in data:
            raise DataError(f"missing top-level key {key!r}", path)
    root = Path(images) if images is not None else Path()
    report = report if report is not None else DataReport(source=str(path))
    wanted = None
    if categories is not None:
        names = set(categories)
        wanted = {c["id"] for c in data.get("categories", []) if c.get("name") in names}
    per_image: dict[int, list[tuple[int, dict]]] = {}
    for k, ann in enumerate(data["annotations"]):
        if wanted is not None and ann.get("category_id") not in wanted:
            continue
        per_image.setdefault(ann.get("image_id"), []).append((k, ann))
    samples = _Images(report)
    for number, info in enumerate(data["images"]):
        anns = per_image.get(info.get("id"), [])
        boxes, ignore, marks, index = [], [], [], []
        for k, ann in anns:
            bbox = ann.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4:
                report.add(path, None, "malformed_box", f"annotation #{k}: bbox={bbox!r}")
                report.boxes_read += 1
                continue
            boxes.append([float(v) if v is not None else math.nan for v in bbox])
            ignore.append(bool(ann.get("iscrowd", 0)) or bool(ann.get("ignore", 0)))
            index.append(k)
            kp = ann.get("keypoints")
            if isinstance(kp, list) and len(kp) == 15 and all(kp[j + 2] > 0 for j in range(0, 15, 3)):
                marks.append(np.array(kp, dtype=np.float32).reshape(5, 3)[:, :2])
            else:
                marks.append(np.full((5, 2), np.nan, dtype=np.float32))
        name = info.get("file_name")
        if not isinstance(name, str) or not name:
            raise DataError(f"images[{number}] has no file_name", path)
        sample = DetectionSample(
            image=str(root / name),
            name=name,
            boxes=_xywh_to_xyxy(np.array(boxes)),
            ignore=np.array(ignore, bool),
            landmarks=np.array(marks).reshape(-1, 5, 2) if any(np.isfinite(m).all() for m in marks) else None,
            source_index=np.array(index, dtype=int),
            lines=np.array(index, dtype=int),
        )
        if verify == "none" and info.get("width"):
            sample.width, sample.height = int(info["width"]), int(info["height"])
        samples.add(_finish(sample, path, None, verify, report), path, None)
    return samples.samples


DETECTION_FORMATS: Registry[Callable[..., list[DetectionSample]]] = Registry("detection format")
for _name, _reader in (
    ("wider", read_wider),
    ("retinaface", read_retinaface),
    ("fddb", read_fddb),
    ("voc", read_voc),
    ("dlib", read_dlib),
    ("coco", read_coco),
):
    DETECTION_FORMATS.register(_name, _reader)


def read_detection(
    format: str, annotations: str | Path, images: str | Path | None = None, *, verify: str = "header", **kwargs
) -> tuple[list[DetectionSample], DataReport]:
    """Read any detection format by name (see ``DETECTION_FORMATS``); returns samples and report.
    Annotations without a single image entry are a :class:`DataError` (an empty file, or the
    wrong one, must not read as a data set with nothing to learn or score)."""
    reader = DETECTION_FORMATS.get(format)
    report = DataReport(source=str(annotations))
    samples = reader(annotations, images, verify=verify, report=report, **kwargs)
    if report.images_read == 0:
        raise DataError(f"no image entry in the annotations ({format} format): is the file empty?", annotations)
    return samples, report


def attach_box_attributes(
    samples: list[DetectionSample],
    csv_path: str | Path,
    *,
    file_column: str = "file",
    index_column: str = "face_index",
    columns: Iterable[str] | None = None,
    normalize: bool = True,
) -> list[str]:
    """Attach per-box labels from a CSV keyed by (image name, 0-based box position in the source
    file), such as WIDER FACE demographics (``file,face_index,...,perceived_gender,...``).

    Boxes the CSV does not cover get None. With ``normalize`` labels are lower-cased.
    Returns the attached columns (default: all but the key and box-coordinate columns).
    """
    path = Path(csv_path)
    if not path.is_file():
        raise DataError("attribute file not found", path)
    with io.StringIO(_read_text(path), newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for col in (file_column, index_column):
            if col not in header:
                raise DataError(f"column {col!r} missing (columns: {', '.join(header)})", path, 1)
        missing = [c for c in columns or [] if c not in header]
        if missing:
            raise DataError(f"column {missing[0]!r} missing (columns: {', '.join(header)})", path, 1)
        wanted = (
            list(columns)
            if columns is not None
            else [c for c in header if c not in (file_column, index_column) and c not in ("x1", "y1", "w", "h")]
        )
        table: dict[tuple[str, int], dict[str, str]] = {}
        for number, row in enumerate(reader, start=2):
            try:
                table[(row[file_column], int(row[index_column]))] = row
            except (TypeError, ValueError):
                raise DataError(f"{index_column} must be an integer, got {row[index_column]!r}", path, number) from None
    for sample in samples:
        index = sample.source_index if sample.source_index is not None else np.arange(len(sample))
        rows = [table.get((sample.name, int(k))) for k in index]
        for col in wanted:
            values = [
                None if r is None or not r.get(col) else (r[col].strip().lower() if normalize else r[col]) for r in rows
            ]
            sample.attributes[col] = values
    return wanted


def write_wider_predictions(out_dir: str | Path, name: str, boxes: np.ndarray, scores: np.ndarray) -> Path:
    """Write one image's detections in WIDER FACE's prediction format.

    ``<out_dir>/<event>/<stem>.txt`` holds the image stem, the number of boxes, and one
    ``x y w h score`` line per box (``boxes`` are xyxy pixels).
    """
    name_path = Path(name)
    target = Path(out_dir) / name_path.parent / (name_path.stem + ".txt")
    target.parent.mkdir(parents=True, exist_ok=True)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    lines = [name_path.stem, str(len(boxes))]
    lines += [f"{x1:.1f} {y1:.1f} {x2 - x1:.1f} {y2 - y1:.1f} {s:.5f}" for (x1, y1, x2, y2), s in zip(boxes, scores)]
    tmp = target.with_suffix(".txt.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(target)
    return target


def face_records(boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray | None = None) -> list[dict]:
    """One image's detections as ``facenas predict`` writes them to ``detections.jsonl``: one
    dict per face, ``{"box": [x1, y1, x2, y2], "score": s, "landmarks": [[x, y] x 5]}`` (pixels
    to 2 decimals, scores to 5, as the WIDER files; ``landmarks`` left out when None)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    out = []
    for i, (box, score) in enumerate(zip(boxes, scores)):
        record = {"box": [round(float(v), 2) for v in box], "score": round(float(score), 5)}
        if landmarks is not None:
            record["landmarks"] = [[round(float(x), 2), round(float(y), 2)] for x, y in np.asarray(landmarks)[i]]
        out.append(record)
    return out


def _prediction_rows(file: Path, report: DataReport) -> list[list[float]] | None:
    """The ``x y w h score`` rows of one WIDER prediction file, or None (reported, with its
    line) when the file is skipped: not UTF-8, no header (image name, then the number of
    detections), or a count that differs from the number of detection lines. Rows that are
    not five numbers, or have a non-finite value, or no area, are reported and dropped."""
    try:
        text = _read_text(file)
    except _NotUTF8 as exc:
        report.add(file, exc.line, "unreadable_prediction_file", f"{exc.problem}; file skipped")
        return None
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)]
    while lines and not lines[-1][1]:
        lines.pop()
    if not lines:
        report.add(file, 1, "bad_prediction_file", "empty: expected the image name and the number of detections")
        return None
    if _is_record(lines[0][1]):
        report.add(
            file,
            1,
            "bad_prediction_file",
            f"{lines[0][1]!r} is a detection, not the image name: the two header lines (image name, number of "
            "detections) are missing; file skipped",
        )
        return None
    count_text = lines[1][1] if len(lines) > 1 else ""
    try:
        count = int(count_text)
    except ValueError:
        count = -1
    if count < 0:
        report.add(
            file, 2, "bad_prediction_file", f"expected the number of detections, found {count_text!r}; file skipped"
        )
        return None
    body = [(n, line) for n, line in lines[2:] if line]
    report.boxes_read += len(body)
    if len(body) != count:
        report.add(
            file,
            2,
            "bad_prediction_file",
            f"the header announces {count} detections but {len(body)} lines follow; file skipped",
        )
        return None
    rows = []
    for number, line in body:
        row = _numbers(line)
        if row is None or len(row) < 5:
            report.add(file, number, "malformed_prediction", repr(line))
        elif not all(map(math.isfinite, row[:5])):
            report.add(file, number, "nan_prediction", repr(line))
        elif row[2] <= 0 or row[3] <= 0:
            report.add(file, number, "empty_prediction", f"w={row[2]:g} h={row[3]:g}")
        else:
            rows.append(row[:5])
    return rows


def read_wider_predictions(
    pred_dir: str | Path, report: DataReport | None = None, skipped: list[str] | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read a WIDER prediction folder: ``{"<event>/<stem>": (boxes xyxy (D, 4), scores (D,))}``.

    Each file holds the image name, the number of detections, and one ``x y w h score`` line
    per detection. A file that cannot be read that way (see :func:`_prediction_rows`) is
    reported in ``report`` and left out; its key is appended to ``skipped`` when given.
    Detections with a non-finite value or no area are reported and dropped. The report counts
    files as images and detection lines as boxes.
    """
    root = Path(pred_dir)
    if not root.is_dir():
        raise DataError("prediction folder not found", root)
    report = report if report is not None else DataReport(source=str(root))
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for file in track(sorted(root.rglob("*.txt")), "reading predictions"):
        key = file.relative_to(root).with_suffix("").as_posix()
        report.images_read += 1
        rows = _prediction_rows(file, report)
        if rows is None:
            if skipped is not None:
                skipped.append(key)
            continue
        arr = np.array(rows, dtype=np.float64).reshape(-1, 5)
        out[key] = (_xywh_to_xyxy(arr[:, :4]).astype(np.float64), arr[:, 4])
    return out

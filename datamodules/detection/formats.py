"""Readers of face-detection annotation formats into :class:`DetectionSample` records, and the
writer of WIDER FACE prediction files.

Every reader takes the annotation file (or folder), the images root, and ``verify``
(``"none"`` | ``"header"`` | ``"full"``, see :func:`datamodules.images.probe_image`). Structural
errors (a count line that is not a number, a missing file) raise :class:`DataError` naming the
file and line; bad boxes and unreadable images are counted in the :class:`DataReport`, reported
with their line, and skipped.
"""

from __future__ import annotations

import csv
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from core.progress import track
from core.registry import Registry

from ..images import sanitize_boxes, verify_sample_image
from ..records import DataError, DataReport, DetectionSample

WIDER_ATTRIBUTES = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        raise DataError("annotation file not found", path)
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            yield number, line.strip()


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
    while i < len(lines):
        number, name = lines[i]
        if not name:
            i += 1
            continue
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
        if len(body) < count:
            raise DataError(f"{name!r} announces {count} {items} but the file ends after {len(body)}", path, count_line)
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
    samples: list[DetectionSample] = []
    for number, name, body in _counted_blocks(path, "boxes"):
        boxes, ignore, line_numbers, index, attrs = [], [], [], [], {k: [] for k in WIDER_ATTRIBUTES if k != "invalid"}
        for k, (box_line, text) in enumerate(body):
            values = _box_values(text, path, box_line, report, name, 4)
            if values is None:
                continue
            flags = (values[4:10] + [0.0] * 6)[:6]
            boxes.append(values[:4])
            ignore.append(flags[3] != 0)
            line_numbers.append(box_line)
            index.append(k)
            for key, value in zip(WIDER_ATTRIBUTES, flags):
                if key != "invalid":
                    attrs[key].append(str(int(value)))
        sample = DetectionSample(
            image=str(root / name),
            name=name,
            boxes=_xywh_to_xyxy(np.array(boxes)),
            ignore=np.array(ignore, dtype=bool),
            attributes=attrs,
            lines=np.array(line_numbers, dtype=int),
            source_index=np.array(index, dtype=int),
        )
        sample = _finish(sample, path, number, verify, report)
        if sample is not None:
            samples.append(sample)
    return samples


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
    samples: list[DetectionSample] = []
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
        sample = _finish(sample, path, current["line"], verify, report)
        if sample is not None:
            samples.append(sample)

    for number, text in _numbered_lines(path):
        if not text:
            continue
        if text.startswith("#"):
            flush()
            current = {"name": text[1:].split()[0], "line": number, "boxes": [], "landmarks": [], "lines": []}
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
    return samples


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
    samples: list[DetectionSample] = []
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
            sample = _finish(sample, file, number, verify, report)
            if sample is not None:
                samples.append(sample)
    return samples


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
    samples = []
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
        sample = _finish(sample, file, None, verify, report)
        if sample is not None:
            samples.append(sample)
    return samples


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
    samples = []
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
        sample = _finish(sample, path, None, verify, report)
        if sample is not None:
            samples.append(sample)
    return samples


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
        data = json.loads(path.read_text())
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
    samples = []
    for info in data["images"]:
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
        name = info["file_name"]
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
        sample = _finish(sample, path, None, verify, report)
        if sample is not None:
            samples.append(sample)
    return samples


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
    """Read any detection format by name (see ``DETECTION_FORMATS``); returns samples and report."""
    reader = DETECTION_FORMATS.get(format)
    report = DataReport(source=str(annotations))
    samples = reader(annotations, images, verify=verify, report=report, **kwargs)
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
    with open(path, newline="") as f:
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


def read_wider_predictions(
    pred_dir: str | Path, report: DataReport | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read a WIDER prediction folder: ``{"<event>/<stem>": (boxes xyxy (D, 4), scores (D,))}``."""
    root = Path(pred_dir)
    if not root.is_dir():
        raise DataError("prediction folder not found", root)
    report = report if report is not None else DataReport(source=str(root))
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for file in track(sorted(root.rglob("*.txt")), "reading predictions"):
        key = file.relative_to(root).with_suffix("").as_posix()
        rows = []
        with open(file) as f:
            text = f.read().splitlines()
        for number, line in enumerate(text[2:], start=3):
            values = line.split()
            if not values:
                continue
            try:
                row = [float(v) for v in values[:5]]
            except ValueError:
                report.add(file, number, "malformed_prediction", repr(line))
                continue
            if len(row) < 5 or not all(map(math.isfinite, row)):
                report.add(file, number, "malformed_prediction", repr(line))
                continue
            rows.append(row)
        arr = np.array(rows, dtype=np.float64).reshape(-1, 5)
        out[key] = (_xywh_to_xyxy(arr[:, :4]).astype(np.float64), arr[:, 4])
    return out

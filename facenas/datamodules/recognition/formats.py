"""Readers of face-identification layouts into :class:`IdentitySample` records, and of
insightface verification-pair ``.bin`` files.

Group attributes are normalised to lower-case words: perceived gender becomes ``"female"`` /
``"male"``; a numeric age column becomes an ``age_bin`` (FR-NAS's AgeDB bins 1-25, 26-50,
51-75, 76-110). Unreadable images are counted in the :class:`DataReport` and skipped (with
``verify`` other than ``"none"``); a malformed line raises :class:`DataError` naming it.
Text files are read as UTF-8 (a leading byte-order mark is dropped); bytes that are not UTF-8
raise :class:`DataError` naming the file and line. A CSV row with fewer or more fields than
the header is an error naming its line (blank lines are skipped).
"""

from __future__ import annotations

import csv
import io
import pickle
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from facenas.core.progress import tick
from facenas.core.registry import Registry

from ..images import IMAGE_EXTENSIONS, probe_image
from ..records import DataError, DataReport, IdentitySample

AGE_BINS: tuple[tuple[int, int], ...] = ((1, 25), (26, 50), (51, 75), (76, 110))
_GENDER_WORDS = {
    "m": "male",
    "male": "male",
    "man": "male",
    "1": "male",
    "f": "female",
    "female": "female",
    "woman": "female",
    "-1": "female",
    "0": "female",
}


def normalize_gender(value: str | None) -> str | None:
    """``"m"`` / ``"Male"`` / ``"1"`` -> ``"male"``; ``"f"`` / ``"-1"`` / ``"0"`` -> ``"female"``."""
    if value is None:
        return None
    text = str(value).strip().lower()
    return _GENDER_WORDS.get(text, text or None)


def age_bin(age: float, bins: Sequence[tuple[int, int]] = AGE_BINS) -> str | None:
    """The ``"lo-hi"`` bin holding ``age`` (inclusive bounds), or None outside all bins."""
    for lo, hi in bins:
        if lo <= age <= hi:
            return f"{lo}-{hi}"
    return None


def _verified(samples: list[IdentitySample], verify: str, report: DataReport, source: Path) -> list[IdentitySample]:
    kept = []
    for sample in samples:
        report.images_read += 1
        tick()
        try:
            probe_image(sample.image, verify)
        except OSError as exc:
            report.add(source, None, "unreadable_image", f"{sample.image}: {exc}")
            continue
        kept.append(sample)
    return kept


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{what} not found", path)
    return path


def read_text(path: str | Path) -> str:
    """A text file's content: UTF-8, a leading byte-order mark dropped (``utf-8-sig``: files
    saved by Excel start with one, which would otherwise stick to the first column name).
    Other bytes raise :class:`DataError` naming the file and line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8", path, line) from None


def read_csv_table(
    path: str | Path, required: Sequence[str] = ()
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """A CSV with a header line: the column names (stripped) and ``(line, {column: value})`` per
    row. A missing ``required`` column, a repeated column name, or a row with fewer or more
    fields than the header raises :class:`DataError` naming the file and line; blank lines are
    skipped."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    header = [h.strip() for h in next(reader, [])]
    if not header:
        raise DataError("empty file: expected a header line naming the columns", path, 1)
    for col in required:
        if col not in header:
            raise DataError(f"column {col!r} missing (columns: {', '.join(header)})", path, 1)
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise DataError(f"column {repeated[0]!r} appears more than once in the header", path, 1)
    rows = []
    for values in reader:
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise DataError(
                f"{len(values)} fields where the header has {len(header)} ({', '.join(header)})", path, reader.line_num
            )
        rows.append((reader.line_num, dict(zip(header, values))))
    return header, rows


def read_identity_folders(
    root: str | Path, *, verify: str = "header", report: DataReport | None = None, attributes: str | Path | None = None
) -> list[IdentitySample]:
    """Read one folder per identity (``root/<identity>/<image>``).

    ``attributes`` optionally names a CSV with an ``identity`` column and group columns
    (e.g. ``gender``) that apply to all images of that identity.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("identity folder root not found", root)
    report = report if report is not None else DataReport(source=str(root))
    per_identity: dict[str, dict[str, str | None]] = {}
    if attributes is not None:
        _, rows = read_csv_table(_require_file(Path(attributes), "identity attribute file"), ("identity",))
        for _, row in rows:
            per_identity[row["identity"].strip()] = _groups(row, exclude=("identity",))
    samples = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        groups = per_identity.get(folder.name, {})
        for image in sorted(folder.iterdir()):
            if image.suffix.lower() in IMAGE_EXTENSIONS:
                samples.append(IdentitySample(image=str(image), identity=folder.name, attributes=dict(groups)))
    return _verified(samples, verify, report, root)


def _groups(row: dict[str, str], exclude: Iterable[str]) -> dict[str, str | None]:
    """Group columns of a CSV row, normalised (gender words, age -> age_bin)."""
    out: dict[str, str | None] = {}
    skip = set(exclude)
    for key, value in row.items():
        if key is None or key in skip:
            continue
        value = (value or "").strip()
        lowered = key.strip().lower()
        if "gender" in lowered or lowered == "sex":
            out[key] = normalize_gender(value) if value else None
        elif lowered == "age":
            out[key] = value or None
            try:
                out["age_bin"] = age_bin(float(value))
            except ValueError:
                out["age_bin"] = None
        else:
            out[key] = value.lower() if value else None
    return out


def _celeba_table(path: Path) -> tuple[list[str], dict[str, tuple[int, list[str]]]]:
    """Parse CelebA's ``count / header / rows`` text tables: header and ``{image: (line, values)}``."""
    lines = read_text(_require_file(path, "CelebA file")).splitlines()
    if len(lines) < 2:
        raise DataError("expected a count line and a header line", path, 1)
    header = lines[1].split()
    rows: dict[str, tuple[int, list[str]]] = {}
    for number, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        values = parts[1:]
        # some files repeat the image-id column in the header
        expected = len(header) - 1 if header and header[0] in ("image_id", "image") else len(header)
        if len(values) != expected:
            raise DataError(f"expected {expected} values after the image name, found {len(values)}", path, number)
        rows[parts[0]] = (number, values)
    if header and header[0] in ("image_id", "image"):
        header = header[1:]
    return header, rows


def read_celeba(
    identity_file: str | Path,
    images: str | Path,
    *,
    attributes_file: str | Path | None = None,
    bbox_file: str | Path | None = None,
    landmarks_file: str | Path | None = None,
    verify: str = "header",
    report: DataReport | None = None,
) -> list[IdentitySample]:
    """Read CelebA: ``identity_CelebA.txt`` (``image identity``), optionally
    ``list_attr_celeba.txt`` (its ``Male`` column becomes ``gender``; images it lacks get None),
    ``list_bbox_celeba.txt`` (crop boxes) and ``list_landmarks_celeba.txt`` (5 points)."""
    identity_path = _require_file(Path(identity_file), "CelebA identity file")
    root = Path(images)
    report = report if report is not None else DataReport(source=str(identity_path))
    attrs: dict[str, tuple[int, list[str]]] = {}
    male_col = None
    if attributes_file is not None:
        header, attrs = _celeba_table(Path(attributes_file))
        if "Male" not in header:
            raise DataError("column 'Male' missing from the attribute header", attributes_file, 2)
        male_col = header.index("Male")
    boxes = _celeba_table(Path(bbox_file))[1] if bbox_file is not None else {}
    marks = _celeba_table(Path(landmarks_file))[1] if landmarks_file is not None else {}
    samples = []
    for number, line in enumerate(read_text(identity_path).splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DataError(f"expected 'image identity', found {line.strip()!r}", identity_path, number)
        name, identity = parts
        gender = None
        if name in attrs and male_col is not None:
            gender = "male" if attrs[name][1][male_col] == "1" else "female"
        bbox = None
        if name in boxes:
            x, y, w, h = (float(v) for v in boxes[name][1][:4])
            bbox = (x, y, x + w, y + h)
        landmarks = np.array(marks[name][1][:10], dtype=np.float32).reshape(5, 2) if name in marks else None
        samples.append(
            IdentitySample(
                image=str(root / name),
                identity=identity,
                attributes={"gender": gender},
                bbox=bbox,
                landmarks=landmarks,
            )
        )
    return _verified(samples, verify, report, identity_path)


def read_vggface2(
    root: str | Path, meta: str | Path | None = None, *, verify: str = "header", report: DataReport | None = None
) -> list[IdentitySample]:
    """Read VGGFace2: identity folders ``n000001/0001_01.jpg`` and ``identity_meta.csv``
    (``Class_ID, Name, Sample_Num, Flag, Gender`` with gender ``m`` / ``f``)."""
    root = Path(root)
    report = report if report is not None else DataReport(source=str(root))
    genders: dict[str, str | None] = {}
    if meta is not None:
        meta_path = _require_file(Path(meta), "VGGFace2 identity_meta.csv")
        reader = csv.reader(io.StringIO(read_text(meta_path), newline=""), skipinitialspace=True)
        header = [h.strip() for h in next(reader, [])]
        for col in ("Class_ID", "Gender"):
            if col not in header:
                raise DataError(f"column {col!r} missing (columns: {', '.join(header)})", meta_path, 1)
        ci, gi = header.index("Class_ID"), header.index("Gender")
        for row in reader:
            if not row:
                continue
            if len(row) <= max(ci, gi):
                raise DataError(f"expected {len(header)} columns, found {len(row)}", meta_path, reader.line_num)
            genders[row[ci].strip()] = normalize_gender(row[gi])
    samples = read_identity_folders(root, verify="none", report=DataReport())
    for sample in samples:
        sample.attributes["gender"] = genders.get(sample.identity)
    return _verified(samples, verify, report, root)


def read_identity_csv(
    csv_file: str | Path,
    images: str | Path | None = None,
    *,
    image_column: str = "image",
    identity_column: str = "identity",
    verify: str = "header",
    report: DataReport | None = None,
) -> list[IdentitySample]:
    """Read a generic CSV: an image column, an identity column, and any group columns (e.g.
    ``gender``, ``race`` for RFW, numeric ``age`` for AgeDB which also yields ``age_bin``).
    Image paths are relative to ``images`` (default: the CSV's folder). Optional face-box
    columns ``x_1, y_1, width, height`` (CelebA's ``list_bbox_celeba.txt`` names; all four or
    none) give the box each image is cropped to; a row whose box cells are empty keeps the whole
    image."""
    path = _require_file(Path(csv_file), "identity CSV")
    root = Path(images) if images is not None else path.parent
    report = report if report is not None else DataReport(source=str(path))
    samples = []
    header, rows = read_csv_table(path, (image_column, identity_column))
    present = [c for c in BOX_COLUMNS if c in header]
    if present and len(present) != len(BOX_COLUMNS):
        missing = [c for c in BOX_COLUMNS if c not in header]
        raise DataError(f"face-box columns need all of {', '.join(BOX_COLUMNS)}; missing {', '.join(missing)}", path, 1)
    for number, row in rows:
        if not row[image_column].strip() or not row[identity_column].strip():
            raise DataError(f"empty {image_column!r} or {identity_column!r}", path, number)
        samples.append(
            IdentitySample(
                image=str(root / row[image_column].strip()),
                identity=row[identity_column].strip(),
                attributes=_groups(row, exclude=(image_column, identity_column, *present)),
                bbox=_csv_box(row, path, number) if present else None,
            )
        )
    return _verified(samples, verify, report, path)


BOX_COLUMNS = ("x_1", "y_1", "width", "height")


def _csv_box(row: dict[str, str], path: Path, line: int) -> tuple[float, float, float, float] | None:
    """A row's face box (x1, y1, x2, y2) from ``x_1, y_1, width, height``; None when all are empty."""
    cells = [row[c].strip() for c in BOX_COLUMNS]
    if not any(cells):
        return None
    try:
        x, y, w, h = (float(c) for c in cells)
    except ValueError:
        raise DataError(
            f"face box {', '.join(cells)}: expected four numbers (x_1, y_1, width, height)", path, line
        ) from None
    if w <= 0 or h <= 0:
        raise DataError(f"face box of width {w:g} and height {h:g}: both must be positive", path, line)
    return (x, y, x + w, y + h)


@dataclass
class VerificationPairs:
    """An insightface verification set (LFW, CFP-FP, AgeDB-30 ``.bin``): encoded images where
    images ``2i`` and ``2i + 1`` form pair ``i``, and ``issame[i]`` says whether they match."""

    images: list[bytes]
    issame: np.ndarray

    def __len__(self) -> int:
        return len(self.issame)

    def decode(self, index: int) -> Image.Image:
        """The ``index``-th image as RGB."""
        return Image.open(io.BytesIO(self.images[index])).convert("RGB")


def read_verification_bin(path: str | Path) -> VerificationPairs:
    """Read an insightface ``.bin``: a pickle of ``(list of JPEG bytes, list of issame bools)``."""
    path = _require_file(Path(path), "verification .bin")
    try:
        with open(path, "rb") as f:
            bins, issame = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"not an insightface verification pickle: {exc}", path) from None
    images = [bytes(b) for b in bins]
    issame_arr = np.asarray(issame, dtype=bool)
    if len(images) != 2 * len(issame_arr):
        raise DataError(f"{len(images)} images for {len(issame_arr)} pairs (expected twice as many)", path)
    return VerificationPairs(images=images, issame=issame_arr)


def write_verification_bin(path: str | Path, images: Sequence[bytes], issame: Sequence[bool]) -> Path:
    """Write pairs in insightface's ``.bin`` layout (the inverse of :func:`read_verification_bin`)."""
    path = Path(path)
    with open(path, "wb") as f:
        pickle.dump((list(images), list(map(bool, issame))), f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def _folders(annotations: str | Path | None, images: str | Path | None, **kw) -> list[IdentitySample]:
    if images is None and annotations is None:
        raise DataError("the folders format needs the identity folder root (images)")
    return read_identity_folders(
        images if images is not None else annotations,  # type: ignore[arg-type]
        attributes=annotations if images is not None else None,
        **kw,
    )


IDENTITY_FORMATS: Registry[Callable[..., list[IdentitySample]]] = Registry("identification format")
IDENTITY_FORMATS.register("folders", _folders)
IDENTITY_FORMATS.register(
    "celeba", lambda annotations, images=None, **kw: read_celeba(annotations, images or Path(annotations).parent, **kw)
)
IDENTITY_FORMATS.register(
    "vggface2",
    lambda annotations, images=None, **kw: read_vggface2(images or Path(annotations).parent, annotations, **kw),
)
IDENTITY_FORMATS.register("csv", lambda annotations, images=None, **kw: read_identity_csv(annotations, images, **kw))


def read_identities(
    format: str, annotations: str | Path | None, images: str | Path | None = None, *, verify: str = "header", **kwargs
) -> tuple[list[IdentitySample], DataReport]:
    """Read any identification format by name (see ``IDENTITY_FORMATS``).

    ``annotations`` / ``images`` per format: ``folders``: attribute CSV (optional) / root;
    ``celeba``: ``identity_CelebA.txt`` / image folder; ``vggface2``: ``identity_meta.csv`` /
    root; ``csv``: the CSV / image root.
    """
    reader = IDENTITY_FORMATS.get(format)
    if annotations is None and format != "folders":
        raise DataError(f"the {format} format needs its annotation file")
    report = DataReport(source=str(annotations if annotations is not None else images))
    samples = reader(annotations, images, verify=verify, report=report, **kwargs)
    return samples, report


@dataclass
class EmbeddingTable:
    """Saved embeddings with one metadata row each: ``embeddings`` (N, D) float32,
    ``identities`` (N,) int (index into the sorted identity names), ``groups`` (N,) int (index
    into ``group_names``; -1 where the row has no group). ``empty_groups`` counts the rows whose
    group is empty; ``out_of_range`` lists the ages (with ``age_bins``) in no bin (e.g. 200, -5,
    NaN): those rows have no group either."""

    embeddings: np.ndarray
    identities: np.ndarray
    groups: np.ndarray
    group_names: list[str]
    empty_groups: int = 0
    out_of_range: list[str] = field(default_factory=list)


def read_embedding_table(
    embeddings: str | Path,
    meta: str | Path,
    *,
    identity_column: str = "identity",
    group_column: str = "gender",
    age_bins: bool = False,
) -> EmbeddingTable:
    """Read embeddings of shape (N, D) and a CSV with one row per embedding (same order), as
    ``facenas.callbacks.EmbeddingWriter`` writes them. Group values are lower-cased; with ``age_bins``
    a numeric column is binned into FR-NAS's age bins.

    ``embeddings`` is an ``.npy`` file, an ``.npz`` holding one array, or ``file.npz:key`` for
    one array of several. The CSV is read by :func:`read_csv_table` (UTF-8, byte-order mark
    dropped, every row as many fields as the header); a missing column, an empty identity, a
    row count that differs from N, an array that is not 2-D or not numeric raise
    :class:`DataError` naming the file (and line). A row with an empty group has no group."""
    values, emb_path = load_embeddings(embeddings)
    meta_path = _require_file(Path(meta), "metadata CSV")
    _, rows = read_csv_table(meta_path, (identity_column, group_column))
    if len(rows) != len(values):
        raise DataError(
            f"{len(rows)} data rows, but {emb_path} has {len(values)} embedding rows "
            "(one row per embedding, same order)",
            meta_path,
        )

    empty: list[int] = []
    out_of_range: list[str] = []

    def group_of(line: int, row: dict) -> str | None:
        value = row[group_column].strip()
        if not value:
            empty.append(line)
            return None
        if age_bins:
            try:
                binned = age_bin(float(value))
            except ValueError:
                raise DataError(f"{group_column}={value!r} is not a number", meta_path, line) from None
            if binned is None:
                out_of_range.append(value)
            return binned
        return value.lower()

    for line, row in rows:
        if not row[identity_column].strip():
            raise DataError(f"empty {identity_column!r}", meta_path, line)
    labels = [group_of(line, r) for line, r in rows]
    names = sorted({g for g in labels if g is not None})
    index = {g: i for i, g in enumerate(names)}
    identities = {v: i for i, v in enumerate(sorted({r[identity_column].strip() for _, r in rows}))}
    return EmbeddingTable(
        np.ascontiguousarray(values, dtype=np.float32),
        np.array([identities[r[identity_column].strip()] for _, r in rows], dtype=np.int64),
        np.array([index[g] if g is not None else -1 for g in labels], dtype=np.int64),
        names,
        len(empty),
        out_of_range,
    )


def load_embeddings(spec: str | Path) -> tuple[np.ndarray, Path]:
    """A numeric (N, D) array from ``file.npy``, ``file.npz`` (its only array) or
    ``file.npz:key``, and the file's path; anything else raises :class:`DataError` naming the
    file (and, for an ``.npz`` of several arrays, their keys)."""
    path, key = Path(spec), None
    text = str(spec)
    if not path.is_file() and ":" in text:
        head, _, tail = text.rpartition(":")
        if head.lower().endswith(".npz") or Path(head).is_file():
            path, key = Path(head), tail
    _require_file(path, "embeddings")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY" and not magic.startswith(b"PK"):
        raise DataError("not a NumPy .npy or .npz file (it lacks their header; save with numpy.save)", path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                keys = list(loaded.files)
                if key is None and len(keys) != 1:
                    found = ", ".join(repr(k) for k in keys) if keys else "none"
                    raise DataError(f"an .npz of {len(keys)} arrays ({found}): name one as {path}:<key>", path)
                if key is not None and key not in keys:
                    raise DataError(f"no array {key!r} (arrays: {', '.join(repr(k) for k in keys)})", path)
                values = loaded[key if key is not None else keys[0]]
        elif key is not None:
            raise DataError(f"{path}:{key}: only an .npz holds named arrays", path)
        else:
            values = loaded
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"not a NumPy .npy or .npz array file ({exc})", path) from None
    if values.ndim != 2:
        raise DataError(f"expected a 2-D (N, D) array, one row per image, got shape {values.shape}", path)
    if values.dtype.kind not in "biuf":
        raise DataError(f"expected numbers, got an array of dtype {values.dtype}", path)
    return values, path

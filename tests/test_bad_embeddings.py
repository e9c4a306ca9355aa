"""Bad input never yields a wrong number: unusable embedding rows (NaN, infinite, all zeros) in
the fairness core, its Metric, its callback and ``facenas eval fairness``; and the files the
report and the identification readers take (``.npz``, byte-order marks, non-UTF-8 bytes, rows
with missing fields, shapes and columns that do not fit)."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import torch

from facenas.callbacks import BadEmbeddingsError, IdentificationFairness, evaluate_fairness, identification_ranks
from facenas.datamodules.records import DataError

from .conftest import run_facenas

METRICS = ("probes", "error", "rank", "rank_by_identity", "rank_disparity", "rank_disparity_id", "disparity", "ratio")


def identities(seed=0, n_ids=40, per=5, dim=32):
    """Embeddings of ``n_ids`` identities of ``per`` images, groups by identity (0: noisier)."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(n_ids), per)
    groups = (ids % 3 != 0).astype(np.int64)
    noise = np.where(groups == 0, 1.2, 0.8)[:, None]
    emb = rng.normal(size=(n_ids, dim))[ids] + noise * rng.normal(size=(len(ids), dim))
    return emb.astype(np.float32), ids, groups


def bad_rows(n, fraction, seed=1):
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=int(round(fraction * n)), replace=False))


def assert_same_result(got, want):
    for key in METRICS:
        assert getattr(got, key) == pytest.approx(getattr(want, key), rel=1e-9, abs=1e-12), key
    assert got.groups == want.groups  # the same rows, the same arithmetic


# --- the metric core ---


@pytest.mark.parametrize("fill", [np.nan, np.inf, 0.0])
def test_all_unusable_rows_are_an_error_not_a_perfect_score(fill):
    emb, ids, groups = identities()
    emb[:] = fill
    with pytest.raises(BadEmbeddingsError, match="200 of 200 embedding rows are unusable"):
        evaluate_fairness(torch.tensor(emb), torch.tensor(ids), torch.tensor(groups))
    with pytest.raises(BadEmbeddingsError):  # whatever the limit below everything
        identification_ranks(torch.tensor(emb), torch.tensor(ids), max_bad_fraction=0.99)


@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf, 0.0, "one_nan"])
@pytest.mark.parametrize("singletons", ["skip", "error"])
@pytest.mark.parametrize("fraction", [0.05, 0.1])  # the default limit, and 10% (the reported case) below a raised one
def test_unusable_rows_leave_probes_and_gallery(fill, singletons, fraction):
    emb, ids, groups = identities()
    bad = bad_rows(len(ids), fraction)
    limit = {} if fraction == 0.05 else {"max_bad_fraction": fraction}
    broken = emb.copy()
    if fill == "one_nan":
        broken[bad, 7] = np.nan
    else:
        broken[bad] = fill
    keep = np.setdiff1d(np.arange(len(ids)), bad)
    clean = evaluate_fairness(
        torch.tensor(emb[keep]), torch.tensor(ids[keep]), torch.tensor(groups[keep]), singletons=singletons
    )
    got = evaluate_fairness(
        torch.tensor(broken), torch.tensor(ids), torch.tensor(groups), singletons=singletons, **limit
    )
    assert_same_result(got, clean)
    assert got.singletons == clean.singletons  # an identity left with one image becomes a singleton
    zero = fill == 0.0
    assert (got.nonfinite_rows, got.zero_rows) == ((0, len(bad)) if zero else (len(bad), 0))
    assert got.excluded_rows == bad.tolist()
    assert got.as_dict()["bad_embeddings"] == len(bad)
    ranks = identification_ranks(torch.tensor(broken), torch.tensor(ids), singletons=singletons, **limit)
    clean_ranks = identification_ranks(torch.tensor(emb[keep]), torch.tensor(ids[keep]), singletons=singletons)
    assert ranks.index.tolist() == keep[clean_ranks.index.numpy()].tolist()  # positions in the input
    assert ranks.rank.tolist() == clean_ranks.rank.tolist()
    assert not set(ranks.index.tolist()) & set(bad.tolist())


def test_the_default_limit_is_five_percent():
    emb, ids, groups = identities()
    for fraction, fails in ((0.05, False), (0.055, True), (0.1, True)):
        broken = emb.copy()
        broken[bad_rows(len(ids), fraction)] = np.nan
        if fails:
            with pytest.raises(BadEmbeddingsError, match="more than max_bad_fraction=0.05"):
                evaluate_fairness(torch.tensor(broken), torch.tensor(ids), torch.tensor(groups))
        else:
            assert evaluate_fairness(torch.tensor(broken), torch.tensor(ids), torch.tensor(groups)).nonfinite_rows == 10


def test_tiny_and_huge_rows_keep_their_direction():
    emb, ids, groups = identities(dim=16)
    scaled = emb.astype(np.float64)
    scaled[:5] *= 1e-30  # float32 normalisation left these near zero length
    scaled[5:10] *= 1e30  # float32 squared norm overflows to inf
    want = identification_ranks(torch.tensor(emb), torch.tensor(ids))
    got = identification_ranks(torch.tensor(scaled), torch.tensor(ids))
    assert got.rank.tolist() == want.rank.tolist() and got.rank_by_identity.tolist() == want.rank_by_identity.tolist()
    assert (got.nonfinite_rows, got.zero_rows) == (0, 0)


def test_metric_and_callback_count_log_and_warn():
    import lightning.pytorch as pl

    from facenas.callbacks import FairnessMetrics

    emb, ids, groups = identities()
    bad = bad_rows(len(ids), 0.04)
    broken = emb.copy()
    broken[bad[:4]] = np.nan
    broken[bad[4:]] = 0.0
    keep = np.setdiff1d(np.arange(len(ids)), bad)
    clean = evaluate_fairness(torch.tensor(emb[keep]), torch.tensor(ids[keep]), torch.tensor(groups[keep]))
    metric = IdentificationFairness()
    for lo in range(0, len(ids), 64):
        metric.update(torch.tensor(broken[lo : lo + 64]), torch.tensor(ids[lo : lo + 64]))
    out = metric.compute()
    assert (out["probes"].item(), out["error"].item()) == (clean.probes, pytest.approx(clean.error))
    assert (out["nonfinite_rows"].item(), out["zero_rows"].item(), out["bad_embeddings"].item()) == (4, 4, 8)

    class Embeddings(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def validation_step(self, batch, batch_idx):
            e, i, g = batch
            return {"embeddings": e, "identities": i, "groups": g}

    def validate(values, **kwargs):
        data = torch.utils.data.TensorDataset(torch.tensor(values), torch.tensor(ids), torch.tensor(groups))
        trainer = pl.Trainer(
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            callbacks=[FairnessMetrics(group_names=["a", "b"], **kwargs)],
        )
        trainer.validate(Embeddings(), dataloaders=torch.utils.data.DataLoader(data, batch_size=50), verbose=False)
        return trainer.callback_metrics

    with pytest.warns(UserWarning, match=r"val epoch 0: 8 embedding rows left out .*4 with a NaN.*4 all zeros"):
        logged = validate(broken)
    assert logged["val/bad_embeddings"].item() == 8 and logged["val/nonfinite_rows"].item() == 4
    assert logged["val/error"].item() == pytest.approx(clean.error, rel=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no warning for clean embeddings
        warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers).*")
        assert validate(emb)["val/bad_embeddings"].item() == 0
    all_nan = np.full_like(emb, np.nan)
    with pytest.raises(FloatingPointError, match="val embeddings at epoch 0: 200 of 200 embedding rows are unusable"):
        validate(all_nan)
    with pytest.raises(FloatingPointError, match="more than max_bad_fraction=0"):
        validate(broken, max_bad_fraction=0.0)


# --- facenas eval fairness (each class once through the command line; its variants through
# evaluate_embedding_files, the function the command calls, whose DataError is the printed line) ---


def write_set(tmp_path, emb, ids, groups, name="emb.npy", meta="meta.csv", encoding="utf-8"):
    np.save(tmp_path / name, emb)
    with open(tmp_path / meta, "w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(["identity", "image", "gender"])
        w.writerows(
            [(f"id{k}", f"{i}.jpg", "female" if g == 0 else "male") for i, (k, g) in enumerate(zip(ids, groups))]
        )
    return ["--embeddings", str(tmp_path / name), "--meta", str(tmp_path / meta)]


def report(*args):
    out = run_facenas("eval", "fairness", *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout), out.stderr


def one_line_error(out, *fragments):
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    for fragment in fragments:
        assert fragment in out.stderr, (fragment, out.stderr)


def from_files(embeddings, meta, **kwargs):
    from facenas.callbacks import evaluate_embedding_files

    return evaluate_embedding_files(str(embeddings), str(meta), device="cpu", **kwargs)


def as_json(result):
    """A FairnessResult as ``--json`` prints it."""
    from facenas.core.values import json_safe

    return json.loads(json.dumps(json_safe(result.as_dict())))


def test_fairness_report_leaves_out_and_counts_bad_rows(tmp_path):
    emb, ids, groups = identities()
    bad = bad_rows(len(ids), 0.05)
    keep = np.setdiff1d(np.arange(len(ids)), bad)
    clean = evaluate_fairness(
        torch.tensor(emb[keep]), torch.tensor(ids[keep]), torch.tensor(groups[keep]), ["female", "male"]
    )
    broken = emb.copy()
    broken[bad[:-3]] = np.nan
    broken[bad[-3:]] = 0.0
    args = write_set(tmp_path, broken, ids, groups)
    got, stderr = report(*args)
    for key in METRICS:
        assert got[key] == pytest.approx(getattr(clean, key), rel=1e-6), key
    assert (got["nonfinite_rows"], got["zero_rows"], got["bad_embeddings"]) == (7, 3, 10)
    assert "10 embedding rows left out (7 with a NaN or infinite value, 3 all zeros" in stderr
    assert f"rows {bad[0]}, {bad[1]}" in stderr
    table = run_facenas("eval", "fairness", *args)
    assert table.returncode == 0 and "rows left out: NaN/inf" in table.stdout
    # above the limit (default 5%): one line naming the file, never a number; or a raised limit
    bad = bad_rows(len(ids), 0.1)
    broken = emb.copy()
    broken[bad] = np.nan
    np.save(tmp_path / "emb.npy", broken)
    out = run_facenas("eval", "fairness", *args, "--json")
    one_line_error(out, "emb.npy: 20 of 200 embedding rows are unusable", "more than max_bad_fraction=0.05")
    keep = np.setdiff1d(np.arange(len(ids)), bad)
    clean = evaluate_fairness(
        torch.tensor(emb[keep]), torch.tensor(ids[keep]), torch.tensor(groups[keep]), ["female", "male"]
    )
    got = from_files(tmp_path / "emb.npy", tmp_path / "meta.csv", max_bad_fraction=0.1)
    assert (got.error, got.probes, got.nonfinite_rows) == (pytest.approx(clean.error), clean.probes, 20)
    np.save(tmp_path / "emb.npy", np.full_like(emb, np.nan))  # the reported case: error 0.0
    with pytest.raises(DataError, match="emb.npy: 200 of 200 embedding rows are unusable"):
        from_files(tmp_path / "emb.npy", tmp_path / "meta.csv", max_bad_fraction=0.5)
    np.save(tmp_path / "emb.npy", emb)
    assert from_files(tmp_path / "emb.npy", tmp_path / "meta.csv").as_dict()["bad_embeddings"] == 0


def test_fairness_report_reads_npz(tmp_path):
    emb, ids, groups = identities()
    args = write_set(tmp_path, emb, ids, groups)
    want = as_json(from_files(tmp_path / "emb.npy", tmp_path / "meta.csv"))
    np.savez(tmp_path / "one.npz", embeddings=emb)
    np.savez(tmp_path / "two.npz", embeddings=emb, logits=emb[:, :3])
    assert as_json(from_files(tmp_path / "one.npz", tmp_path / "meta.csv")) == want
    meta = args[2:]
    assert report("--embeddings", f"{tmp_path / 'two.npz'}:embeddings", *meta)[0] == want
    out = run_facenas("eval", "fairness", "--embeddings", str(tmp_path / "two.npz"), *meta)
    one_line_error(out, "two.npz", "2 arrays ('embeddings', 'logits')", "two.npz:<key>")
    with pytest.raises(DataError, match="two.npz: no array 'emb' \\(arrays: 'embeddings', 'logits'\\)"):
        from_files(f"{tmp_path / 'two.npz'}:emb", tmp_path / "meta.csv")
    with pytest.raises(DataError, match="only an .npz holds named arrays"):
        from_files(f"{tmp_path / 'emb.npy'}:embeddings", tmp_path / "meta.csv")


def test_fairness_report_reads_a_byte_order_mark_and_names_undecodable_bytes(tmp_path):
    emb, ids, groups = identities()
    write_set(tmp_path, emb, ids, groups)
    want = as_json(from_files(tmp_path / "emb.npy", tmp_path / "meta.csv"))
    write_set(tmp_path, emb, ids, groups, meta="bom.csv", encoding="utf-8-sig")  # identity is the first column
    assert (tmp_path / "bom.csv").read_bytes()[:3] == b"\xef\xbb\xbf"
    assert report("--embeddings", str(tmp_path / "emb.npy"), "--meta", str(tmp_path / "bom.csv"))[0] == want
    lines = (tmp_path / "meta.csv").read_text().splitlines()
    lines[4] = lines[4].replace("female", "f\xe9minin").replace("male", "m\xe2le")
    (tmp_path / "latin1.csv").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    out = run_facenas(
        "eval", "fairness", "--embeddings", str(tmp_path / "emb.npy"), "--meta", str(tmp_path / "latin1.csv")
    )
    one_line_error(out, "latin1.csv:5: not UTF-8 text")


def test_fairness_report_rejects_rows_shapes_and_columns_that_do_not_fit(tmp_path):
    emb, ids, groups = identities()
    args = write_set(tmp_path, emb, ids, groups)
    lines = (tmp_path / "meta.csv").read_text().splitlines()

    def meta_with(number, text):
        changed = list(lines)
        changed[number - 1] = text
        (tmp_path / "changed.csv").write_text("\n".join(changed) + "\n")
        return tmp_path / "changed.csv"

    out = run_facenas("eval", "fairness", "--embeddings", args[1], "--meta", str(meta_with(7, "id1,5.jpg")))
    one_line_error(out, "changed.csv:7: 2 fields where the header has 3 (identity, image, gender)")
    for text, message in (
        ("id1,5.jpg,male,extra", r"changed.csv:7: 4 fields"),
        (",5.jpg,male", "changed.csv:7: empty"),
    ):
        with pytest.raises(DataError, match=message):
            from_files(tmp_path / "emb.npy", meta_with(7, text))
    (tmp_path / "fewer.csv").write_text("\n".join(lines[:-3]) + "\n")
    out = run_facenas("eval", "fairness", "--embeddings", args[1], "--meta", str(tmp_path / "fewer.csv"))
    one_line_error(out, "fewer.csv: 197 data rows, but", "has 200 embedding rows")
    np.save(tmp_path / "e3.npy", emb[:, :, None])
    out = run_facenas("eval", "fairness", "--embeddings", str(tmp_path / "e3.npy"), *args[2:])
    one_line_error(out, "e3.npy: expected a 2-D (N, D) array, one row per image, got shape (200, 32, 1)")
    np.save(tmp_path / "e1.npy", emb[:, 0])
    np.save(tmp_path / "text.npy", np.array([["a", "b"]] * 200))
    for name, message in (
        ("e1.npy", r"e1.npy: expected a 2-D .* got shape \(200,\)"),
        ("text.npy", "text.npy: expected numbers"),
        ("meta.csv", "meta.csv: not a NumPy .npy or .npz file"),
    ):
        with pytest.raises(DataError, match=message):
            from_files(tmp_path / name, tmp_path / "meta.csv")
    out = run_facenas("eval", "fairness", *args, "--group_column", "race")
    one_line_error(out, "meta.csv:1: column 'race' missing (columns: identity, image, gender)")
    with pytest.raises(DataError, match=r"column 'person' missing \(columns: identity, image, gender\)"):
        from_files(tmp_path / "emb.npy", tmp_path / "meta.csv", identity_column="person")


# --- the identification readers, through the data module and `facenas data check` ---


def identity_csv(tmp_path, name="labels.csv", encoding="utf-8", header=("gender", "image", "identity"), edit=None):
    """Ten identities of two tiny images each; gender first, so that a byte-order mark sticks to it."""
    from PIL import Image

    images = tmp_path / "img"
    images.mkdir(exist_ok=True)
    rows = []
    for k in range(10):
        for j in range(2):
            Image.new("RGB", (8, 8), (k * 20, j * 50, 0)).save(images / f"{k}_{j}.png")
            rows.append({"gender": "f" if k % 2 else "m", "image": f"{k}_{j}.png", "identity": f"person{k}"})
    lines = [",".join(header)] + [",".join(r[h] for h in header) for r in rows]
    if edit is not None:
        edit(lines)
    (tmp_path / name).write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return tmp_path / name, images


def datamodule(tmp_path, annotations, images, **kwargs):
    from facenas.datamodules.recognition import FaceIDDataModule

    data = FaceIDDataModule(
        format="csv",
        annotations=str(annotations),
        images=str(images),
        split_file=str(tmp_path / "split.json"),
        num_workers=0,
        **kwargs,
    )
    data.setup()
    return data


def test_identity_csv_with_a_byte_order_mark_keeps_its_first_column(tmp_path):
    plain = datamodule(tmp_path / "a", *identity_csv(mk(tmp_path / "a")))
    bom = datamodule(tmp_path / "b", *identity_csv(mk(tmp_path / "b"), encoding="utf-8-sig"))
    assert bom.group_names == plain.group_names == ["female", "male"]
    assert [s.attributes for s in bom.splits["train"]] == [s.attributes for s in plain.splits["train"]]


def test_identity_csv_names_undecodable_bytes_and_short_rows(tmp_path):
    def latin(lines):
        lines[3] = lines[3].replace("person1", "person\xe91")

    annotations, images = identity_csv(tmp_path, "latin.csv", encoding="latin-1", edit=latin)
    with pytest.raises(DataError, match=r"latin\.csv:4: not UTF-8 text"):
        datamodule(tmp_path, annotations, images)
    out = run_facenas("data", "check", "--format", "csv", "--annotations", str(annotations), "--images", str(images))
    one_line_error(out, "latin.csv:4: not UTF-8 text")

    def short(lines):
        lines[5] = lines[5].rsplit(",", 1)[0]  # the identity field missing

    annotations, images = identity_csv(tmp_path, "short.csv", edit=short)
    with pytest.raises(DataError, match=r"short\.csv:6: 2 fields where the header has 3 \(gender, image, identity\)"):
        datamodule(tmp_path, annotations, images)
    out = run_facenas("data", "check", "--format", "csv", "--annotations", str(annotations), "--images", str(images))
    one_line_error(out, "short.csv:6: 2 fields")


def test_identity_group_column_that_does_not_exist_lists_the_columns(tmp_path):
    annotations, images = identity_csv(tmp_path)
    with pytest.raises(DataError, match=r"group_column 'race' is not a column of the data \(columns: gender\)"):
        datamodule(tmp_path, annotations, images, group_column="race")


def mk(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_fairness_report_names_a_device_it_cannot_use(tmp_path):
    emb, ids, groups = identities()
    args = write_set(tmp_path, emb, ids, groups)
    out = run_facenas("eval", "fairness", *args, "--group_column", "gender", "--device", "bogus")
    one_line_error(out, "device 'bogus' cannot be used")

"""`facenas eval transfer`: streamed verification on insightface pair sets, and
identification fairness by another protected attribute (race, age bins), on files the tests write."""

from __future__ import annotations

import csv
import io
import itertools
import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from facenas.callbacks import verification_accuracy
from facenas.callbacks.fairness import evaluate_fairness
from facenas.callbacks.verification import embed_pairs
from facenas.datamodules.recognition.datamodule import eval_transform
from facenas.datamodules.recognition.formats import read_verification_bin, write_verification_bin
from facenas.datamodules.recognition.synthetic import generate_identity_dataset
from facenas.models.recognition import FaceID

from .conftest import run_facenas, synthetic_identities


class CountingPairs:
    """A pair set that records, at each forward pass, how many images were decoded since the last."""

    def __init__(self, pairs):
        self.pairs, self.images, self.issame = pairs, pairs.images, pairs.issame
        self.since_embed, self.per_embed = 0, []

    def decode(self, i):
        self.since_embed += 1
        return self.pairs.decode(i)

    def embed(self, batch):
        self.per_embed.append((self.since_embed, len(batch)))
        self.since_embed = 0
        return batch.flatten(1)[:, :16]


def jpeg(array):
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(array).save(buf, format="JPEG")
    return buf.getvalue()


def test_pairs_are_streamed_a_batch_at_a_time(tmp_path):
    rng = np.random.default_rng(0)
    blobs = [jpeg(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(50)]
    pairs = read_verification_bin(write_verification_bin(tmp_path / "p.bin", blobs, [True, False] * 12 + [True]))
    counting = CountingPairs(pairs)
    emb = embed_pairs(counting.embed, counting, image_size=32, batch_size=8)
    # never more than a batch of decoded images at once, and every image once, in order
    assert counting.per_embed == [(8, 8)] * 6 + [(2, 2)]
    transform = eval_transform(32)
    everything = torch.stack([transform(pairs.decode(i)) for i in range(50)]).flatten(1)[:, :16]
    torch.testing.assert_close(emb, everything)


@pytest.fixture(scope="module")
def transfer_files(tmp_path_factory):
    """A trained FaceID checkpoint, a pair set, and RFW- and AgeDB-style labelled sets of unseen
    synthetic identities."""
    root = tmp_path_factory.mktemp("transfer")
    torch.manual_seed(0)
    data = synthetic_identities(root, images=6, ratios=(4, 1, 1))
    model = FaceID(backbone="dpn_search_small_301", embedding_dim=16, optimizer="adamw", lr=3e-3)
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, data)
    ckpt = root / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    labels = generate_identity_dataset(root / "eval_ids", 12, 4, size=32, seed=7)
    rows = list(csv.DictReader(labels.open()))
    races, ages = ["african", "asian", "caucasian"], [20, 40, 60, 90]
    people = sorted({r["identity"] for r in rows})
    for name, column, values in (("rfw.csv", "race", races), ("agedb.csv", "age", ages)):
        with (labels.parent / name).open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["image", "identity", column])
            for r in rows:
                out.writerow([r["image"], r["identity"], values[people.index(r["identity"]) % len(values)]])
    by_person = {p: [r["image"] for r in rows if r["identity"] == p] for p in people}
    blobs, issame = [], []
    for a, b in itertools.islice(itertools.combinations(people, 2), 10):
        for first, second, same in (
            (by_person[a][0], by_person[a][1], True),
            (by_person[a][2], by_person[b][0], False),
        ):
            blobs += [(labels.parent / first).read_bytes(), (labels.parent / second).read_bytes()]
            issame.append(same)
    pair_set = write_verification_bin(root / "pairs.bin", blobs, issame)
    return ckpt, pair_set, labels.parent, rows, people


def test_evaluate_transfer_verification_and_race(transfer_files, tmp_path):
    ckpt, pair_set, folder, rows, people = transfer_files
    out = run_facenas(
        "eval", "transfer", "--ckpt_path", str(ckpt), "--sets", f"[{pair_set}]",
        "--identification", str(folder / "rfw.csv"),
        "--attribute", "race", "--batch_size", "7", "--image_size", "32", "--device", "cpu", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    model = FaceID.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False).eval()
    transform = eval_transform(32)
    pairs = read_verification_bin(pair_set)
    with torch.no_grad():
        emb = model.embed(torch.stack([transform(pairs.decode(i)) for i in range(len(pairs.images))]))
    want, std = verification_accuracy((emb[0::2] - emb[1::2]).norm(dim=1).numpy(), pairs.issame)
    got = result["verification"]["pairs"]
    assert got["pairs"] == 20 and got["accuracy"] == pytest.approx(want) and got["std"] == pytest.approx(std)
    # identification by race: every image, each metric the maximum over ordered pairs of groups
    from PIL import Image

    images = torch.stack([transform(Image.open(folder / r["image"]).convert("RGB")) for r in rows])
    with torch.no_grad():  # in batches of 7, as the command (convolutions round differently by batch size)
        emb = torch.cat([model.embed(images[i : i + 7]) for i in range(0, len(images), 7)])
    races = sorted({"african", "asian", "caucasian"})
    race_of = {p: ["african", "asian", "caucasian"][i % 3] for i, p in enumerate(people)}
    ids = torch.tensor([people.index(r["identity"]) for r in rows])
    groups = torch.tensor([races.index(race_of[r["identity"]]) for r in rows])
    direct = evaluate_fairness(emb, ids, groups, races, reference_group=None).as_dict()
    ident = result["identification"]
    assert set(ident["groups"]) == set(races) and ident["probes"] == len(rows)
    for key in ("error", "rank_disparity", "rank_disparity_id", "disparity", "ratio", "error_ratio"):
        assert ident[key] == pytest.approx(direct[key], abs=1e-6), key
    accuracy = [ident["groups"][g]["accuracy"] for g in races]
    assert ident["disparity"] == pytest.approx(max(abs(a - b) for a in accuracy for b in accuracy))


def test_evaluate_transfer_age_bins_and_errors(transfer_files, tmp_path):
    ckpt, _, folder, _, _ = transfer_files
    args = [
        "eval",
        "transfer",
        "--ckpt_path",
        str(ckpt),
        "--identification",
        str(folder / "agedb.csv"),
        "--image_size",
        "32",
    ]
    out = run_facenas(*args, "--attribute", "age_bin", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(json.loads(out.stdout)["identification"]["groups"]) == ["1-25", "26-50", "51-75", "76-110"]
    out = run_facenas(*args, "--attribute", "race", cwd=tmp_path)
    assert out.returncode == 2 and "no image has a value for the attribute 'race'" in out.stderr
    out = run_facenas("eval", "transfer", "--ckpt_path", str(ckpt), cwd=tmp_path)
    assert out.returncode != 0 and "nothing to evaluate" in out.stderr
    out = run_facenas("eval", "transfer", "--ckpt_path", str(tmp_path / "nope.ckpt"), "--sets", "[x.bin]", cwd=tmp_path)
    assert out.returncode != 0 and "checkpoint not found" in out.stderr

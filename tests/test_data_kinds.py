"""The job on the other data kinds a user has: similarity pairs judged by Spearman (embedding), and
image classification from Parquet with PNG bytes. Real data, real weights where they exist."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import yaml

from tierserve.pruning.data import DataError, hash_split
from tierserve.pruning.job import EXIT_PASSED, run_job
from tierserve.pruning.spec import parse_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lee_pairs(tmp_path_factory, lee_corpus) -> str:
    """Every pair of Lee's 50 news documents with its mean human similarity rating (0..1)."""
    from gensim.test.utils import datapath

    ratings = np.loadtxt(datapath("similarities0-1.txt"))  # (50, 50), upper triangle filled
    rows = []
    for i in range(50):
        for j in range(i + 1, 50):
            split = hash_split(f"{i}-{j}", {"calibration": 0.3, "test": 0.7})
            rows.append({"text": lee_corpus[i], "text2": lee_corpus[j],
                         "label": float(ratings[i, j]), "split": split,
                         "slice": "same-topic" if ratings[i, j] >= 0.5 else "other"})
    path = tmp_path_factory.mktemp("lee") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _spec(model_uri: str, task: str, data: dict, gates: list, **pruning) -> dict:
    return {"model": {"uri": model_uri, "task": task, "maxLength": 128},
            "data": data,
            "pruning": {"criterion": "activation", "structures": ["heads", "neurons"],
                        "budget": {"kind": "flops", "target": 0.3, "seqLen": 64, "batch": 8},
                        "calibrationSamples": 64, **pruning},
            # the loosest latency gate (omitted it is 1.0): a loaded test box's ratio is noise
            "recovery": {"rescale": False}, "gates": {"quality": gates, "maxLatencyRatio": 2.0}}


def test_similarity_pairs_are_judged_by_spearman(tmp_path, lee_pairs, minilm_path):
    spec = parse_spec(_spec(str(minilm_path), "embedding", {
        "calibration": {"uri": lee_pairs, "split": "calibration"},
        "evaluation": {"uri": lee_pairs, "split": "test"}},
        [{"metric": "spearman", "relative": 0.85}, {"metric": "agreement", "min": 0.8}]))
    report, code = run_job(spec, tmp_path / "out")
    full, pruned = report["metrics"]["full"], report["metrics"]["pruned"]
    assert 0.4 < full["spearman"] < 1.0  # MiniLM ranks Lee's pairs much like people do
    assert pruned["agreement"] > 0.8  # Spearman of pruned vs full cosines
    assert set(report["slices"]["full"]) == {"same-topic", "other"}
    assert code == EXIT_PASSED, report["gates"]
    # the spec's gates, latency and size (always judged), and the runtime_parity gate every
    # graph-runtime job adds
    assert {g["metric"] for g in report["gates"]} == {"spearman", "agreement", "latency_ratio",
                                                      "size_ratio", "runtime_parity"}


def test_similarity_scores_must_vary(tmp_path):
    from tierserve.pruning.pairs import load_similarity

    path = tmp_path / "flat.jsonl"
    path.write_text(json.dumps({"text": "a", "text2": "b", "label": 1}) + "\n"
                    + json.dumps({"text": "c", "text2": "d", "label": 1}) + "\n")
    with pytest.raises(DataError, match="field 'label' is constant"):
        load_similarity(path)


def _digits_parquet(path) -> None:
    """scikit-learn's bundled handwritten digits (1797 real 8x8 scans) as PNG bytes in Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    pngs = []
    for x in d.images:
        buf = io.BytesIO()
        Image.fromarray((x * 255 / 16).astype(np.uint8), mode="L").save(buf, format="PNG")
        pngs.append(buf.getvalue())
    split = ["train" if i % 5 else "test" for i in range(len(pngs))]
    table = pa.table({"image": pngs, "label": [int(t) for t in d.target], "split": split,
                      "slice": ["round" if t in (0, 6, 8, 9) else "straight" for t in d.target]})
    pq.write_table(table, path)


@pytest.fixture(scope="module")
def digits_vit(tmp_path_factory):
    """A small ViT trained here on the digits' train split (no pretrained ViT is offline)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from tierserve.pruning.data import load_classification

    root = tmp_path_factory.mktemp("digits")
    _digits_parquet(root / "digits.parquet")
    train = load_classification(root / "digits.parquet", split="train", image_field="image")
    proc = ViTImageProcessor(do_resize=False, image_mean=[0.5], image_std=[0.5])
    cfg = ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=64,
                    num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
                    num_labels=10, id2label={i: str(i) for i in range(10)},
                    label2id={str(i): i for i in range(10)})
    torch.manual_seed(0)
    model = ViTForImageClassification(cfg)
    pixels = proc(images=list(train.texts), return_tensors="pt")["pixel_values"]
    labels = torch.tensor(train.labels)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, len(labels), (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(pixel_values=pixels[idx]).logits, labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(root / "vit")
    proc.save_pretrained(root / "vit")
    return root


def test_image_classification_from_parquet_png_bytes(tmp_path, digits_vit):
    data = str(digits_vit / "digits.parquet")
    spec = parse_spec(_spec(str(digits_vit / "vit"), "image-classification", {
        "calibration": {"uri": data, "split": "train", "limit": 256},
        "evaluation": {"uri": data, "split": "test"}, "labels": "labels"},
        [{"metric": "accuracy", "relative": 0.9}, {"metric": "agreement", "min": 0.85}],
        multiple=4))
    report, code = run_job(spec, tmp_path / "out")
    assert report["metrics"]["full"]["accuracy"] > 0.85  # the ViT learned the digits
    assert set(report["slices"]["pruned"]) == {"round", "straight"}
    assert report["budget"]["encoder_flops_removed"] > 0.2
    assert code == EXIT_PASSED, report["gates"]
    model_dir = tmp_path / "out" / "artifacts" / report["key"] / "model"
    assert (model_dir / "model.safetensors").is_file()


def test_bad_image_field_names_file_field_and_record(tmp_path):
    from tierserve.pruning.data import load_classification

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"image": "not-a-file.png", "label": 1}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl: field 'image' in record 0: .*neither"):
        load_classification(path, image_field="image")


def test_spec_yaml_for_images_keeps_field_names():
    doc = yaml.safe_load("""
    model: {uri: /m, task: image-classification}
    data: {calibration: {uri: a.parquet}, evaluation: {uri: b.parquet}, imageField: img}
    """)
    assert parse_spec(doc).data.image_field == "img"

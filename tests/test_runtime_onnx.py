"""ONNX Runtime tiers on the real all-MiniLM-L6-v2: the exported full and pruned graphs answer as
eager does, a graph that does not is refused, an INT8 graph goes through the gates, and the
execution provider follows the tier's GPUs."""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import replace

import pytest
import torch
import yaml
from test_surgery import uneven_structure

from tierserve.pruning.adapters import adapter_for
from tierserve.pruning.artifact import ArtifactError, runtime_graph
from tierserve.pruning.export import MIN_COSINE, check_parity, export_graph, parity_gate
from tierserve.pruning.inputs import head_queries
from tierserve.pruning.quality import judge
from tierserve.pruning.runtime import (
    CPU_EP,
    CUDA_EP,
    default_runtime,
    graph_model,
    providers_for,
    serving_runtime,
)
from tierserve.pruning.served import parity_examples, serve_tiers
from tierserve.pruning.spec import SpecError, parse_spec
from tierserve.pruning.surgery import apply_structure
from tierserve.pruning.tasks import load_task_model

STRUCTURE = uneven_structure(6, 12, 1536, removed=(1, 4), seed=7)  # 1..11 heads per layer


def _spec(repo_root, **serving) -> dict:
    doc = yaml.safe_load((repo_root / "examples/minilm-pass.yaml").read_text())["spec"]
    doc["serving"] = serving
    return doc


def test_cuda_is_chosen_only_for_a_tier_with_gpus_when_onnxruntime_sees_one(caplog):
    assert providers_for(1, [CUDA_EP, CPU_EP]) == [CUDA_EP, CPU_EP]
    assert providers_for(0.5, ["TensorrtExecutionProvider", CUDA_EP, CPU_EP])[0] == CUDA_EP
    assert providers_for(0, [CUDA_EP, CPU_EP]) == [CPU_EP]  # a CPU tier stays on the CPU
    with caplog.at_level(logging.WARNING, logger="tierserve.runtime"):
        assert providers_for(1, ["AzureExecutionProvider", CPU_EP]) == [CPU_EP]
    assert "CUDAExecutionProvider" in caplog.text  # asked for a GPU, said why it has none


def test_encoders_default_to_onnxruntime_and_decoders_to_torch(repo_root):
    assert default_runtime("embedding") == default_runtime("rerank") == "onnxruntime"
    assert default_runtime("sequence-classification") == "onnxruntime"
    assert default_runtime("text-generation") == "torch"
    assert serving_runtime(parse_spec(_spec(repo_root))) == "onnxruntime"
    assert serving_runtime(parse_spec(_spec(repo_root, runtime="torch"))) == "torch"
    with pytest.raises(SpecError, match="spec.serving.runtime"):
        parse_spec(_spec(repo_root, runtime="tensorrt"))


@pytest.fixture(scope="module")
def graphs(minilm_path, tmp_path_factory):
    """Full MiniLM and an unevenly pruned copy (layers removed, 1..11 heads), both exported."""
    torch.set_num_threads(2)
    full = load_task_model(minilm_path, "embedding", max_length=128)
    pruned = replace(full, model=copy.deepcopy(full.model))
    apply_structure(adapter_for(pruned.model), STRUCTURE)
    out = tmp_path_factory.mktemp("graphs")
    meta = {t: export_graph(tm, out / f"{t}.onnx") for t, tm in (("full", full), ("pruned", pruned))}
    return {"full": full, "pruned": pruned, "dir": out, "meta": meta}


@pytest.mark.slow
def test_exported_full_and_pruned_graphs_answer_as_eager(graphs, debian_retrieval):
    test = debian_retrieval["test"]
    texts = list(test.queries[:48]) + list(test.corpus[:48])  # 3 to 128+ tokens: padded batches
    for tier in ("full", "pruned"):
        eager = graphs[tier]
        graph = graph_model(eager, graphs["dir"] / f"{tier}.onnx", threads=2)
        p = check_parity(eager, graph, texts, tier=tier, batch_size=32)
        assert p.passed and p.min_cosine >= MIN_COSINE and p.max_abs_diff < 1e-4, p
        assert p.n == len(texts)
        for n in (1, 33):  # dynamic batch and sequence axes
            out = graph.outputs(graph.batch(texts[:n]))
            assert out.shape == (n, 384)
            assert torch.allclose(out.norm(dim=1), torch.ones(n), atol=1e-5)  # normalised inside
    assert graphs["meta"]["full"]["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert graphs["meta"]["pruned"]["bytes"] < graphs["meta"]["full"]["bytes"]


@pytest.mark.slow
def test_a_graph_that_does_not_answer_as_eager_is_refused(graphs, lee_corpus, tmp_path):
    # the full model's graph shipped as the pruned tier's: a stale or mixed-up export
    wrong = graph_model(graphs["pruned"], graphs["dir"] / "full.onnx", threads=2)
    right = graph_model(graphs["full"], graphs["dir"] / "full.onnx", threads=2)
    bad = check_parity(graphs["pruned"], wrong, lee_corpus[:40], tier="pruned")
    good = check_parity(graphs["full"], right, lee_corpus[:40], tier="full")
    assert not bad.passed and bad.min_cosine < MIN_COSINE and good.passed
    gate = parity_gate([good, bad])
    assert gate.metric == "runtime_parity" and not gate.passed
    assert gate.value == bad.min_cosine and "pruned: min cosine" in gate.detail
    assert parity_gate([good]).passed

    # a graph changed after the job measured it is refused at load (sha256 in pruning.json)
    art = tmp_path / "model"
    (art / "onnx").mkdir(parents=True)
    graph = art / "onnx" / "pruned.onnx"
    graph.write_bytes((graphs["dir"] / "pruned.onnx").read_bytes())
    from tierserve.pruning.artifact import sha256_file

    manifest = {"format": "tierserve-pruned", "format_version": 1, "task": "embedding",
                "model_class": "BertModel", "structure": STRUCTURE.to_dict(), "weights": {},
                "runtime": {"name": "onnxruntime", "graphs": {"pruned": "onnx/pruned.onnx",
                                                              "full": "../../outside.onnx"},
                            "sha256": {"pruned": sha256_file(graph)}}}
    (art / "pruning.json").write_text(json.dumps(manifest))
    assert runtime_graph(art, "pruned") == (graph, False)
    with pytest.raises(ArtifactError, match="not a file inside the artifact"):
        runtime_graph(art, "full")
    graph.write_bytes(graph.read_bytes()[:-16] + bytes(16))
    with pytest.raises(ArtifactError, match="sha256"):
        runtime_graph(art, "pruned")


@pytest.mark.slow
def test_an_int8_graph_is_judged_by_the_gates_on_onnxruntime(graphs, repo_root, debian_retrieval,
                                                             tmp_path):
    doc = _spec(repo_root)
    doc["pruning"]["budget"] = {"kind": "flops", "target": 0.3, "batch": 8, "seqLen": 64}
    doc["gates"] = {"quality": [{"metric": "ndcg@10", "relative": 0.5},
                                {"metric": "embedding_cosine", "min": 0.5}],
                    "maxSizeRatio": 0.9}
    doc["quantization"] = {"mode": "int8-dynamic"}
    spec = parse_spec(doc)
    evaluation = head_queries(debian_retrieval["test"], 60)  # as evaluation.limit cuts it
    full, pruned = graphs["full"], graphs["pruned"]
    served = serve_tiers(spec, full, pruned, "int8-dynamic", tmp_path / "onnx",
                         parity_examples(evaluation, full, n=64))
    assert served.runtime["graphs"] == {"full": "onnx/full.onnx",
                                        "pruned": "onnx/pruned.int8.onnx"}
    assert served.gate.passed  # the fp32 export is faithful; INT8 is judged by the quality gates
    assert served.pruned.quantized and served.full.graph.endswith("full.onnx")
    q = served.quantization
    # the encoder's MatMul weights are int8; the word embeddings (a Gather) stay fp32
    assert q["mode"] == "int8-dynamic" and q["pruned_int8_bytes"] < 0.9 * q["pruned_fp32_bytes"]
    assert q["pruned_int8_p50_s"] > 0 and q["latency_ratio"] > 0

    j = judge(spec, served.full, served.pruned, evaluation)
    by_metric = {g.metric: g for g in j.gates}
    assert by_metric["ndcg@10"].passed and by_metric["embedding_cosine"].value < 1.0
    assert by_metric["size_ratio"].value == pytest.approx(
        (tmp_path / "onnx/pruned.int8.onnx").stat().st_size
        / (tmp_path / "onnx/full.onnx").stat().st_size)
    assert j.latency["ratio"] > 0 and by_metric["size_ratio"].passed


def test_openvino_serves_fp32_graphs_only_and_never_decoders(repo_root):
    assert serving_runtime(parse_spec(_spec(repo_root, runtime="openvino"))) == "openvino"
    doc = _spec(repo_root, runtime="openvino")
    doc["quantization"] = {"mode": "int8-dynamic"}
    with pytest.raises(SpecError, match="int8-dynamic runs on onnxruntime"):
        parse_spec(doc)


@pytest.mark.slow
def test_openvino_answers_from_the_same_graph_within_the_parity_gate(graphs, debian_retrieval):
    """The exported graph compiled by OpenVINO (bf16 where the CPU has it): the parity gate,
    not an assumption, decides that it may serve."""
    test = debian_retrieval["test"]
    texts = list(test.queries[:32]) + list(test.corpus[:32])
    eager = graphs["pruned"]
    ov = graph_model(eager, graphs["dir"] / "pruned.onnx", threads=1, runtime="openvino")
    assert ov.runtime == "openvino" and ov.provider.startswith("OpenVINO CPU")
    p = check_parity(eager, ov, texts, tier="pruned")
    assert p.passed and p.min_cosine >= MIN_COSINE, p
    out = ov.outputs(ov.batch(texts[:3]))
    assert out.shape == (3, 384)
    # a pickled graph model (the job's Ray evaluation tasks) carries the graph, not the session
    import pickle

    again = pickle.loads(pickle.dumps(ov))
    assert torch.allclose(again.outputs(again.batch(texts[:3])), out, atol=1e-6)


def test_each_tier_loads_its_graph_from_the_job_artifact_unless_overridden():
    from tierserve.pruning.report_model import PruningReport
    from tierserve.serving.app import tier_runtimes

    doc = {"deployable": True, "artifact": {"uri": "file:///runs/x/artifacts/k"},
           "runtime": {"name": "onnxruntime", "graphs": {"full": "onnx/full.onnx"}}}
    full, pruned = tier_runtimes(PruningReport.read(doc), None)
    assert full == {"name": "onnxruntime", "artifact": "file:///runs/x/artifacts/k/model"}
    assert pruned == {**full, "optional": False}  # the job's own graph: required
    full, pruned = tier_runtimes(PruningReport.read(doc), "/tmp/degraded")
    assert full["artifact"].endswith("artifacts/k/model")  # full's graph stays the job's
    assert pruned == {"name": "onnxruntime", "artifact": "/tmp/degraded", "optional": True}
    torch_report = PruningReport.read({**doc, "runtime": {"name": "torch"}})
    assert tier_runtimes(torch_report, None) == (None, None)
    assert tier_runtimes(PruningReport.read({"deployable": True}), None) == (None, None)


def _tiny_task_model(family: str, minilm_path):
    """A small random model of `family` with a real preprocessor (MiniLM's tokenizer, a ViT
    image processor), as load_task_model would give it."""
    from test_adapters import _tiny
    from transformers import AutoTokenizer, ViTImageProcessor

    from tierserve.pruning.tasks import Task, TaskModel

    torch.manual_seed(0)
    model = _tiny(family)
    if family == "vit":
        proc = ViTImageProcessor(size={"height": 16, "width": 16})
        return TaskModel(task=Task.image_classification, model=model.eval(), processor=proc)
    model.resize_token_embeddings(30522)  # MiniLM's tokenizer ids must index the table
    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    return TaskModel(task=Task.sequence_classification, model=model.eval(), processor=tok,
                     max_length=32)


@pytest.mark.parametrize("family", ["bert", "roberta", "electra", "distilbert", "vit"])
def test_every_supported_family_exports_with_torchscript_and_keeps_parity(family, minilm_path,
                                                                            tmp_path):
    """The tracing exporter ("auto" picks it) handles each encoder family the adapters prune,
    unevenly pruned included: logits within 1e-4 of eager on padded batches of other sizes."""
    import numpy as np

    tm = _tiny_task_model(family, minilm_path)
    apply_structure(adapter_for(tm.model), uneven_structure(4, 6, 40, removed=(2,), seed=3))
    meta = export_graph(tm, tmp_path / "g.onnx")
    assert meta["exporter"].startswith("torch.onnx torchscript"), meta
    graph = graph_model(tm, tmp_path / "g.onnx", threads=1)
    if family == "vit":
        g = torch.Generator().manual_seed(3)
        batches = [{"pixel_values": torch.randn(n, 3, 16, 16, generator=g)} for n in (1, 5)]
    else:
        batches = [tm.batch(["a", "a much longer text that pads the other row of the batch " * 2,
                             "three"]), tm.batch(["one text alone"])]
    for b in batches:
        with torch.no_grad():
            want = tm.outputs(b).numpy()
        got = graph.outputs(b).numpy()
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-4, family


def test_auto_falls_back_to_the_dynamo_exporter_when_tracing_fails(minilm_path, tmp_path,
                                                                    monkeypatch, caplog):
    from tierserve.pruning import export

    def broken(*_args, **_kw):  # fault injection: a model the tracing exporter cannot handle
        raise RuntimeError("Unsupported: ONNX export of operator foo")

    monkeypatch.setattr(export, "_torchscript", broken)
    tm = _tiny_task_model("bert", minilm_path)
    with caplog.at_level(logging.WARNING, logger="tierserve.export"):
        meta = export_graph(tm, tmp_path / "g.onnx")
    assert meta["exporter"].startswith("torch.onnx dynamo"), meta
    assert "torchscript exporter failed (RuntimeError: Unsupported" in caplog.text
    with pytest.raises(RuntimeError, match="operator foo"):
        export_graph(tm, tmp_path / "h.onnx", exporter="torchscript")
    with pytest.raises(ValueError, match="exporter must be one of"):
        export_graph(tm, tmp_path / "i.onnx", exporter="tensorrt")

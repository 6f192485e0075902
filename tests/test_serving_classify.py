"""/v1/classify on a real sequence classifier: MiniLM fine-tuned here (briefly) on gensim's 200
Pang & Lee polarity snippets, pruned by the real job, served by real Serve replicas.

The cascade's confidence for a classifier is the softmax margin; the job calibrates it on the
validation split and the router escalates below it.
"""

from __future__ import annotations

import gzip
import json

import httpx
import pytest
import serving_common
from serving_common import deploy

from tierserve.pruning.data import hash_split

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
serve_url = serving_common.serve_url  # the module's local Serve (a fixture)

SPLITS = {"calibration": 0.5, "validation": 0.25, "test": 0.25}


@pytest.fixture(scope="module")
def classifier(minilm_path, polarity, tmp_path_factory):
    """MiniLM + a 2-class head, fine-tuned for 2 epochs on the calibration split."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(minilm_path), num_labels=2, id2label={0: "neg", 1: "pos"},
        label2id={"neg": 0, "pos": 1})
    rows = [(t, y) for i, (t, y) in enumerate(polarity)
            if hash_split(str(i), SPLITS) == "calibration"]
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    for _ in range(2):
        for i in range(0, len(rows), 16):
            texts, labels = zip(*rows[i:i + 16], strict=True)
            enc = tok(list(texts), padding=True, truncation=True, max_length=64,
                      return_tensors="pt")
            loss = model(**enc, labels=torch.tensor(labels)).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    model.eval()
    path = tmp_path_factory.mktemp("classifier") / "model"
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def cls_job(classifier, polarity, tmp_path_factory):
    from tierserve.pruning.job import run_job
    from tierserve.pruning.spec import parse_spec

    out = tmp_path_factory.mktemp("cls-job")
    data = out / "polarity.jsonl.gz"
    with gzip.open(data, "wt") as f:
        for i, (text, y) in enumerate(polarity):
            f.write(json.dumps({"id": str(i), "text": text, "label": ["neg", "pos"][y],
                                "split": hash_split(str(i), SPLITS)}) + "\n")
    src = {"uri": str(data)}
    doc = {"model": {"uri": str(classifier), "task": "sequence-classification", "maxLength": 64},
           "data": {"calibration": {**src, "split": "calibration"},
                    "validation": {**src, "split": "validation"},
                    "evaluation": {**src, "split": "test"}, "sliceField": None},
           "pruning": {"criterion": "activation", "budget": {"kind": "flops", "target": 0.3,
                                                             "seqLen": 64, "batch": 8},
                       "calibrationSamples": 64},
           "recovery": {"rescale": True},
           "gates": {"quality": [{"metric": "agreement", "min": 0.6}],
                     "maxLatencyRatio": 2.0},  # the loosest: a loaded box's ratio is noise
           # ~50 validation rows cannot guarantee 0.95 (59 needed): the empirical cut
           "serving": {"policy": "cascade", "targetAgreement": 0.95, "calibrationDelta": None,
                       "full": {"cpus": 0.5}, "pruned": {"cpus": 0.5}}}
    report, code = run_job(parse_spec(doc), out / "out", name="ts-cls")
    assert code == 0, report.get("gates")
    return doc, report, out / "out"


def test_classifier_calibration_uses_the_margin(cls_job):
    cal = cls_job[1]["calibration"]
    assert cal["confidence"] == "margin" and cal["source"] == "validation"
    assert cal["validation"]["agreement"] >= 0.95


def test_classify_through_the_cascade(cls_job, serve_url):
    doc, _, out = cls_job
    deploy("ts-cls", doc, str(out))
    url = f"{serve_url}/ts-cls"
    with httpx.Client(timeout=120) as c:
        r = c.post(f"{url}/v1/classify", json={"texts": ["a wonderful, moving film",
                                                         "dull and far too long"]}).json()
        assert r["labels"][0] in ("neg", "pos") and len(r["probabilities"]) == 2
        assert r["reason"] in ("cascade_confident", "cascade_escalated")
        assert (r["tier"] == "full") == (r["reason"] == "cascade_escalated")
        r = c.post(f"{url}/v1/classify", json={"texts": ["fine"]}, headers={"X-Tier": "full"})
        assert (r.json()["tier"], r.json()["reason"]) == ("full", "rule")
        r = c.post(f"{url}/v1/rerank", json={"query": "q", "documents": ["d"]})
        assert r.status_code == 400 and "sequence-classification" in r.json()["detail"]

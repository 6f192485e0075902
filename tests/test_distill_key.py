"""The distillation file's CONTENT keys the job's artifact (spec.data.distillation): a changed file
gives a new key, the same content the same key. Cheap: the real spec and key functions, no job."""

from __future__ import annotations

from pathlib import Path

from distill_common import small_spec

from tierserve.pruning.inputs import JobInputs
from tierserve.pruning.job import job_key, key_hashes
from tierserve.pruning.spec import parse_spec

HASHES = {"model": {"model.safetensors": "0" * 64}, "data": {"/data/queries.jsonl.gz": "1" * 64}}


def _key(data: Path, texts: Path, recovery: dict, uri: str | None = None) -> tuple[str, dict]:
    doc = small_spec(data, recovery)
    doc["spec"]["data"]["distillation"] = {"uri": uri or str(texts)}
    doc["spec"]["data"]["baseDir"] = str(texts.parent)
    spec = parse_spec(doc)
    hashes = key_hashes(spec, JobInputs(Path("/model"), None, None, None, HASHES))
    return job_key(spec, hashes), hashes


def test_distillation_file_content_is_part_of_the_artifact_key(tmp_path):
    texts = tmp_path / "requests.jsonl"
    texts.write_text('{"text": "install a web server"}\n')
    first, hashes = _key(tmp_path, texts, {"distillSteps": 10})
    assert hashes["distillation"] == {str(texts): hashes["distillation"][str(texts)]}
    assert hashes["data"] == HASHES["data"]  # the other inputs are kept as they are

    texts.write_text('{"text": "install a web server"}\n')  # rewritten, same content
    assert _key(tmp_path, texts, {"distillSteps": 10})[0] == first
    # a relative uri resolves against data.baseDir: the same file, the same content hash
    assert _key(tmp_path, texts, {"distillSteps": 10}, uri="requests.jsonl")[1] == hashes

    texts.write_text('{"text": "install a mail server"}\n')  # same path, new content
    assert _key(tmp_path, texts, {"distillSteps": 10})[0] != first


def test_no_distillation_no_file_hash(tmp_path):
    missing = tmp_path / "absent.jsonl"  # never read when the spec does not distil
    _, hashes = _key(tmp_path, missing, {"distillSteps": 0})
    assert hashes == HASHES

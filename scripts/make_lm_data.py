"""Build the decoder-LM example dataset: examples/data/lm/lm.jsonl.gz (+ meta.json).

    python scripts/make_lm_data.py

Rows (one JSONL file, every row has `split` and `slice`):
- perplexity texts {"text"}: gensim's Lee background corpus (300 news articles, slice "news"),
  split by hash of "lee:<line number>"; and the frozen Debian long descriptions of
  examples/data/debian/corpus.jsonl.gz (slice "debian"), keeping their own hash split.
- a generation task {"prompt", "answer"}: Debian packages of Section games or science (from
  examples/data/debian/sections.jsonl.gz, same split), asked as a one-word question. The answer
  is the Section; `accuracy` checks that it appears in the model's first answer line.

Splits: calibration 0.25, validation 0.25, test 0.5 (tierserve.pruning.data.hash_split), so the
importance/recovery text, the cascade threshold text and the gate text never overlap.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from tierserve.pruning.data import hash_split, read_records

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "examples" / "data" / "lm"
FRACTIONS = {"calibration": 0.25, "validation": 0.25, "test": 0.5}
PROMPT = ("Package description: {text}\n\nIs this package about games or science? "
          "Answer with one word.")
DEBIAN_TEXTS = 400  # Debian descriptions kept for perplexity (first n, sha1 order)
MAX_CHARS = 600  # task descriptions are cut here, so prompts stay short


def lee_rows() -> list[dict]:
    from gensim.test.utils import datapath

    text = Path(datapath("lee_background.cor")).read_bytes().decode("cp1252")  # not UTF-8
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return [{"id": f"lee:{i}", "text": ln, "slice": "news",
             "split": hash_split(f"lee:{i}", FRACTIONS)} for i, ln in enumerate(lines)]


def debian_rows() -> list[dict]:
    corpus = read_records(ROOT / "examples" / "data" / "debian" / "corpus.jsonl.gz")
    return [{"id": f"debian:{r['id']}", "text": r["text"], "slice": "debian", "split": r["split"]}
            for r in corpus[:DEBIAN_TEXTS]]


def task_rows() -> list[dict]:
    sections = read_records(ROOT / "examples" / "data" / "debian" / "sections.jsonl.gz")
    return [{"id": f"task:{r['id']}", "prompt": PROMPT.format(text=r["text"][:MAX_CHARS]),
             "answer": r["label"], "slice": r["label"], "split": r["split"]}
            for r in sections if r["label"] in ("games", "science")]


def main() -> None:
    rows = lee_rows() + debian_rows() + task_rows()
    OUT.mkdir(parents=True, exist_ok=True)
    with gzip.open(OUT / "lm.jsonl.gz", "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        kind = "task" if "prompt" in r else r["slice"]
        counts.setdefault(kind, {}).setdefault(r["split"], 0)
        counts[kind][r["split"]] += 1
    meta = json.loads((ROOT / "examples" / "data" / "debian" / "meta.json").read_text())
    (OUT / "meta.json").write_text(json.dumps({
        "generator": "scripts/make_lm_data.py", "rows": counts, "fractions": FRACTIONS,
        "debian_archive": {k: v for k, v in meta.items() if "date" in k.lower()},
        "prompt": PROMPT}, indent=2) + "\n")
    print(json.dumps(counts))


if __name__ == "__main__":
    main()

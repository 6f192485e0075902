"""Adapters: the registry, real MiniLM (bare and with a classification head), and tiny random-init
models of every supported family, each pruned unevenly and checked against a masked reference."""

from __future__ import annotations

import pytest
import torch
from test_surgery import masked_reference, uneven_structure
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    OPTConfig,
    OPTModel,
    RobertaConfig,
    RobertaForSequenceClassification,
    ViTConfig,
    ViTForImageClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

from tierserve.pruning.adapters import (
    UnsupportedArchitectureError,
    adapter_for,
    supported_model_types,
)
from tierserve.pruning.cost import ModelShape, whole_params
from tierserve.pruning.surgery import apply_structure

TEXT = dict(vocab_size=120, hidden_size=48, num_hidden_layers=4, num_attention_heads=6,
            intermediate_size=40, max_position_embeddings=64, num_labels=3)


def _tiny(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "bert":
        return BertForSequenceClassification(BertConfig(**TEXT))
    if family == "roberta":
        return RobertaForSequenceClassification(RobertaConfig(**TEXT, pad_token_id=1))
    if family == "xlm-roberta":
        return XLMRobertaForSequenceClassification(XLMRobertaConfig(**TEXT, pad_token_id=1))
    if family == "electra":
        return ElectraForSequenceClassification(ElectraConfig(**TEXT, embedding_size=24))
    if family == "distilbert":
        return DistilBertForSequenceClassification(DistilBertConfig(
            vocab_size=120, dim=48, n_layers=4, n_heads=6, hidden_dim=40,
            max_position_embeddings=64, num_labels=3))
    return ViTForImageClassification(ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=48, num_hidden_layers=4,
        num_attention_heads=6, intermediate_size=40, num_labels=3))


def _inputs(family: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if family == "vit":
        return {"pixel_values": torch.randn(3, 3, 16, 16, generator=g)}
    ids = torch.randint(3, 120, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0  # one padded row, so attention masking is exercised
    return {"input_ids": ids, "attention_mask": mask}


def _logits(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("family", ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "vit"])
def test_tiny_models_prune_unevenly_like_their_masked_reference(family):
    model = _tiny(family).eval()
    ad = adapter_for(model)
    assert (ad.num_layers, ad.num_heads(0), ad.head_dim, ad.intermediate_size(0)) == (4, 6, 8, 40)
    shape = ModelShape.from_adapter(ad)
    assert whole_params(shape) == sum(p.numel() for p in model.parameters())
    st = uneven_structure(4, 6, 40, removed=(2,), seed=5)
    assert len({len(st.layers[i].heads) for i in st.kept_layers}) > 1  # really uneven
    ref = masked_reference(model, st)
    inputs = _inputs(family)
    before = _logits(model, inputs)
    apply_structure(ad, st)
    after = _logits(model, inputs)
    assert after.shape == (3, 3)
    assert torch.allclose(after, _logits(ref, inputs), atol=1e-5)
    assert not torch.allclose(after, before, atol=1e-4)
    assert sum(p.numel() for p in model.parameters()) == whole_params(shape, st)
    assert model.config.num_hidden_layers == 3
    assert [ad.num_heads(j) for j in range(3)] == [len(st.layers[i].heads) for i in st.kept_layers]
    assert model.config.tierserve_layers == ad.layer_shapes()


def test_minilm_bare_encoder(minilm_path):
    model = AutoModel.from_pretrained(minilm_path)
    ad = adapter_for(model)
    assert ad.backbone is model and ad.family == "bert"
    assert (ad.num_layers, ad.num_heads(0), ad.head_dim, ad.hidden_size) == (6, 12, 32, 384)
    assert ad.intermediate_size(5) == 1536
    h = ad.handles(3)
    assert h.q is model.encoder.layer[3].attention.self.query
    assert h.ffn_out.weight.shape == (384, 1536)


def test_minilm_sequence_classifier_prunes_through_its_backbone(minilm_path, lee_corpus):
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=3).eval()
    ad = adapter_for(model)
    assert ad.backbone is model.bert
    tok = AutoTokenizer.from_pretrained(minilm_path)
    inputs = dict(tok(lee_corpus[:4], padding=True, truncation=True, max_length=48,
                      return_tensors="pt"))
    st = uneven_structure(6, 12, 1536, removed=(5,), seed=2)
    ref = masked_reference(model, st)
    apply_structure(ad, st)
    out = _logits(model, inputs)
    assert out.shape == (4, 3)
    assert torch.allclose(out, _logits(ref, inputs), atol=1e-5)


def test_unsupported_architecture_names_what_is_supported():
    opt = OPTModel(OPTConfig(num_hidden_layers=1, hidden_size=32, ffn_dim=64, num_attention_heads=2,
                             vocab_size=50, max_position_embeddings=16, word_embed_proj_dim=32))
    with pytest.raises(UnsupportedArchitectureError, match="'opt'.*bert.*distilbert.*gpt2.*vit"):
        adapter_for(opt)
    with pytest.raises(UnsupportedArchitectureError, match="config.model_type"):
        adapter_for(torch.nn.Linear(2, 2))
    assert {"bert", "roberta", "xlm-roberta", "electra", "distilbert", "vit"} <= set(
        supported_model_types())


def test_decoder_bert_with_cross_attention_is_rejected():
    cfg = BertConfig(**TEXT, is_decoder=True, add_cross_attention=True)
    with pytest.raises(UnsupportedArchitectureError, match="cross-attention"):
        adapter_for(BertForSequenceClassification(cfg))


def test_keep_calls_validate_indices():
    ad = adapter_for(_tiny("bert"))
    with pytest.raises(ValueError, match="sorted and unique"):
        ad.keep_heads(0, [2, 1])
    with pytest.raises(ValueError, match="out of range"):
        ad.keep_neurons(0, [0, 40])
    with pytest.raises(ValueError, match="0 heads"):
        ad.keep_heads(0, [])
    with pytest.raises(ValueError, match="every layer"):
        ad.keep_layers([])

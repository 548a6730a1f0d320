"""Review fixes of the transformers hybrid classes: GPTNeoX's head (embed_out) follows
resize_token_embeddings, and packed documents (TRL's padding-free training and packing) do not
pass Mamba state from one document to the next."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.helpers.hf_tiny import VOCAB, tiny_hybrid

HYBRIDS = {
    "gpt_neox classic mamba1 + mamba2": ("gpt_neox", "MSA", dict(layout="classic", d_state=8)),
    "llama grouped mamba1 + mamba2": ("llama", "MAS", dict(layout="attention")),
    "mistral mamba only": ("mistral", "SM", dict(layout="attention")),
}


def _model(name: str):
    arch, pattern, mamba = HYBRIDS[name]
    return tiny_hybrid(arch, pattern, **mamba)


def test_resize_token_embeddings_resizes_the_gpt_neox_head(tmp_path):
    model = tiny_hybrid("gpt_neox", "MA", layout="classic", d_state=8)
    model.resize_token_embeddings(VOCAB + 8, mean_resizing=False)
    ids = torch.randint(3, VOCAB + 8, (2, 5))
    assert model(ids).logits.shape[-1] == VOCAB + 8
    assert model.get_output_embeddings() is model.embed_out
    assert not any(name.startswith("lm_head") for name in model.state_dict())
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize("name", HYBRIDS)
def test_packed_documents_score_as_each_alone(name):
    model = _model(name)
    generator = torch.Generator().manual_seed(5)
    lengths = [(5, 4), (2, 3, 4)]  # two rows of 9 tokens, each holding whole documents
    docs = [[torch.randint(3, VOCAB, (n,), generator=generator) for n in row] for row in lengths]
    ids = torch.stack([torch.cat(row) for row in docs])
    positions = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths])
    packed = model(ids, position_ids=positions, use_cache=False).logits
    for r, row in enumerate(docs):
        start = 0
        for doc in row:
            alone = model(doc[None], use_cache=False).logits[0]
            torch.testing.assert_close(packed[r, start : start + len(doc)], alone)
            start += len(doc)
    packed.sum().backward()
    assert all(p.grad is not None for p in model.parameters())

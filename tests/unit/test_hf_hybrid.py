"""Our transformers hybrid classes on their own: batched, padded use gives each row what it
gives alone (what lm-eval and TRL rely on)."""

import subprocess
import sys

import pytest
import torch

from tests.distributed.launch import REPO
from tests.helpers.hf_tiny import VOCAB, tiny_hybrid

HYBRIDS = {
    "gpt_neox classic mamba1 + mamba2": ("gpt_neox", "MSA", dict(layout="classic", d_state=8)),
    "llama grouped mamba1 + mamba2": ("llama", "MAS", dict(layout="attention")),
    "mistral mamba only": ("mistral", "SM", dict(layout="attention")),
}


def _rows() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return [torch.randint(3, VOCAB, (n,), generator=generator) for n in (7, 3, 5)]


def _left_padded(rows: list[torch.Tensor], pad: int = 0):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    return ids, mask


@pytest.mark.parametrize("name", HYBRIDS)
def test_left_padded_batch_generates_what_each_row_generates_alone(name):
    arch, pattern, mamba = HYBRIDS[name]
    model = tiny_hybrid(arch, pattern, **mamba)
    rows = _rows()
    ids, mask = _left_padded(rows)
    settings = dict(
        max_new_tokens=5,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        batched = model.generate(ids, attention_mask=mask, **settings)
        for i, row in enumerate(rows):
            alone = model.generate(row[None], **settings)
            assert torch.equal(batched.sequences[i, -5:], alone.sequences[0, -5:]), f"row {i}"
            for step, (ours, reference) in enumerate(
                zip(batched.logits, alone.logits, strict=True)
            ):
                torch.testing.assert_close(
                    ours[i], reference[0], rtol=1e-4, atol=1e-4, msg=f"row {i} step {step}"
                )


@pytest.mark.parametrize("name", HYBRIDS)
def test_right_padded_batch_scores_what_each_row_scores_alone(name):
    arch, pattern, mamba = HYBRIDS[name]
    model = tiny_hybrid(arch, pattern, **mamba)
    rows = _rows()
    width = max(len(r) for r in rows)
    ids = torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])
    with torch.no_grad():
        batched = model(ids).logits
        for i, row in enumerate(rows):
            alone = model(row[None]).logits[0]
            torch.testing.assert_close(batched[i, : len(row)], alone, rtol=1e-5, atol=1e-5)


def test_the_package_imports_light_and_the_hf_package_registers():
    """Every training process imports megatron_mamba: transformers stays out of it, and
    `import megatron_mamba.hf` is what makes AutoConfig / AutoModelForCausalLM know our types."""
    code = (
        "import sys, megatron_mamba.train\n"
        "assert not [m for m in sys.modules if m.startswith(('transformers', 'lm_eval'))]\n"
        "from transformers import AutoConfig, AutoModelForCausalLM\n"
        "import megatron_mamba.hf\n"
        "config = AutoConfig.for_model('llama_hybrid', layer_pattern='MA', num_hidden_layers=2)\n"
        "print(type(AutoModelForCausalLM.from_config(config)).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["LlamaHybridForCausalLM"]

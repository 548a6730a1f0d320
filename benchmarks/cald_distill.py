"""CALD's distillation step the way its code trains it: transformers models and plain PyTorch.

The baseline for benchmarks/distill_step.py. CALD (lm/open_instruct/retrain_mamba_distill.py)
runs under accelerate's mixed precision: fp32 weights, the forward under torch.autocast, the
teacher a transformers GPTNeoXForCausalLM asked for its hidden states, the student GPTNeoX blocks
around transformers' MambaMixer (benchmarks/mamba_model.py's CaldModel). The loss is the same
objective as ours: CE + alpha_layer · mean over blocks (all but the last `skip_last`) of the MSE
between layer-normalised block outputs + alpha_logits · KL(softmax(teacher/T) ‖ student/T), summed
over the vocabulary and averaged over tokens; then gradient clipping and torch's AdamW.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.attention_model import hf_gpt_neox_config
from benchmarks.mamba_model import CaldModel


def _layer_loss(student_blocks, teacher_hidden, skip_last: int) -> torch.Tensor:
    # transformers' hidden_states[0] is the embedding output, [i + 1] block i's output.
    count = len(student_blocks) - skip_last
    losses = []
    for i in range(count):
        s, t = student_blocks[i].float(), teacher_hidden[i + 1].float()
        h = s.shape[-1]
        losses.append(F.mse_loss(F.layer_norm(s, (h,)), F.layer_norm(t, (h,))))
    return torch.stack(losses).mean()


def _logits_kl(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(s, t, reduction="sum") / (s.numel() // s.shape[-1])


def cald_distill_step(
    config,
    tokens: torch.Tensor,
    alpha_layer: float = 15.0,
    alpha_logits: float = 1.0,
    temperature: float = 2.0,
    skip_last: int = 1,
):
    """(student, teacher, step): an all-mamba1 `config` distilled from its attention twin."""
    from transformers import GPTNeoXForCausalLM

    teacher_config = hf_gpt_neox_config(config)
    teacher_config.torch_dtype = torch.float32
    teacher = GPTNeoXForCausalLM(teacher_config).cuda().eval().requires_grad_(False)
    student = CaldModel(config, "mamba1").cuda().train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5, weight_decay=0.0)
    inputs, labels = tokens[:, :-1], tokens[:, 1:]

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            with torch.no_grad():
                taught = teacher(inputs, output_hidden_states=True)
            blocks, logits = student.blocks_and_logits(inputs)
            ce = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
            layer = _layer_loss(blocks, taught.hidden_states, skip_last)
            kl = _logits_kl(logits, taught.logits, temperature)
            loss = ce + alpha_layer * layer + alpha_logits * kl
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return student, teacher, step

"""DPO: the loss against a hand computation and against TRL's DPOTrainer on the same pairs,
log-probabilities from our native model and from its transformers export."""

import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig, MistralForCausalLM

import megatron_mamba.hf  # noqa: F401  (registers the hybrid classes with transformers' Auto*)
from megatron_mamba.config import ParallelConfig
from megatron_mamba.convert.exporter import export_hf
from megatron_mamba.convert.importer import import_hf
from megatron_mamba.data.batches import (
    INPUT_MULTIPLE,
    PreferenceBatch,
    TokenBatch,
    padded_length,
)
from megatron_mamba.models.build import build_model
from megatron_mamba.training.checkpoint import find_checkpoint, load_weights, read_model_config
from megatron_mamba.training.dpo import DPOConfig, PreferenceOptimisation, dpo_loss
from megatron_mamba.training.reference_logps import micro_batches, reference_logps
from tests.helpers.hf_tiny import _GQA_SHAPE, randomize_norms
from tests.helpers.tiny_tokenizer import make_tokenizer

trl = pytest.importorskip("trl")

VOCAB = 300  # megatron pads it to 384; the log-probabilities must leave the padding out


def test_loss_and_rewards_equal_a_hand_computation():
    policy_chosen = torch.tensor([-10.0, -3.0, -7.5], dtype=torch.float64)
    policy_rejected = torch.tensor([-12.0, -2.0, -7.5], dtype=torch.float64)
    reference_chosen = torch.tensor([-11.0, -2.5, -8.0], dtype=torch.float64)
    reference_rejected = torch.tensor([-11.5, -2.5, -7.0], dtype=torch.float64)
    beta = 0.1
    losses, chosen, rejected = dpo_loss(
        policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta
    )
    for i in range(3):
        r_c = beta * (policy_chosen[i].item() - reference_chosen[i].item())
        r_r = beta * (policy_rejected[i].item() - reference_rejected[i].item())
        assert chosen[i].item() == pytest.approx(r_c, abs=1e-15)
        assert rejected[i].item() == pytest.approx(r_r, abs=1e-15)
        assert losses[i].item() == pytest.approx(math.log1p(math.exp(-(r_c - r_r))), rel=1e-12)
    # A policy equal to its reference scores log 2 on every pair.
    same = dpo_loss(policy_chosen, policy_rejected, policy_chosen, policy_rejected, 0.5)[0]
    torch.testing.assert_close(same, torch.full_like(same, math.log(2)))


def _preferences(count: int) -> Dataset:
    rows = [
        {
            "prompt": [{"role": "user", "content": "What does attention cost?"}],
            "chosen": [{"role": "assistant", "content": "Memory that grows with the text."}],
            "rejected": [{"role": "assistant", "content": "Nothing at all."}],
        },
        {
            "prompt": [{"role": "user", "content": "Name a colour."}],
            "chosen": [{"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "assistant", "content": "I would rather not say a colour."}],
        },
    ]
    return Dataset.from_list(rows * (count // 2))


def _hybrid(root, name: str, tokenizer, seed: int):
    """A Mistral hybrid (mamba1, attention, mamba2) as a native checkpoint and its export."""
    torch.manual_seed(seed)
    config = MistralConfig(
        **{**_GQA_SHAPE, "vocab_size": VOCAB, "max_position_embeddings": 256},
        num_hidden_layers=3,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    source = MistralForCausalLM(config)
    randomize_norms(source)
    source.save_pretrained(root / f"{name}-hf")
    mamba = dict(layout="attention", init="attention")
    native = root / f"{name}-native"
    import_hf(root / f"{name}-hf", native, "MAS", mamba=mamba, seed=seed, progress=False)
    export_hf(native, root / f"{name}-export", progress=False)
    model = build_model(read_model_config(native), ParallelConfig())
    load_weights(find_checkpoint(native, native), model)
    exported = AutoModelForCausalLM.from_pretrained(root / f"{name}-export")
    return model.eval(), exported.eval()


def test_loss_equals_trl_on_the_same_pairs(runtime, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(make_tokenizer(tmp_path / "tok"))
    policy, policy_hf = _hybrid(tmp_path, "policy", tokenizer, seed=1)
    reference, reference_hf = _hybrid(tmp_path, "reference", tokenizer, seed=2)
    beta = 0.1
    trainer = trl.DPOTrainer(
        model=policy_hf,
        ref_model=reference_hf,
        args=trl.DPOConfig(
            output_dir=str(tmp_path / "dpo"),
            beta=beta,
            per_device_train_batch_size=4,
            report_to=[],
            use_cpu=True,
            bf16=False,  # TRL would otherwise run the reference under bf16 autocast
            max_length=128,
        ),
        train_dataset=_preferences(4),
        processing_class=tokenizer,
    )
    inputs = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        expected = trainer._compute_loss(trainer.model, inputs, False).item()
    logged = {k: v[-1] for k, v in trainer._metrics["eval"].items()}  # the models are in eval

    tokens, completion = inputs["input_ids"], inputs["completion_mask"]
    valid = inputs["attention_mask"]
    assert torch.equal(valid, valid.cummin(-1).values), "TRL padded on the left"
    chosen, rejected = (
        TokenBatch(t, m[:, 1:].float())
        for t, m in zip(tokens.chunk(2), completion.chunk(2), strict=True)
    )
    objective = PreferenceOptimisation(policy, reference, DPOConfig(beta=beta))
    batch = PreferenceBatch(chosen, rejected)
    with torch.no_grad():
        outputs, loss_func = objective.forward_step(batch, policy)
        loss, ours = loss_func(outputs)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # the inputs were padded to a multiple of 8 (targets masked): the same as unpadded
    assert (tokens.shape[1] - 1) % objective.input_multiple != 0
    objective.input_multiple = 1
    with torch.no_grad():
        outputs, loss_func = objective.forward_step(batch, policy)
        unpadded = loss_func(outputs)[1]
    for name in ("logp_chosen", "logp_rejected", "reward_margin"):
        assert unpadded[name].item() == pytest.approx(ours[name].item(), rel=1e-5, abs=1e-6)
    objective.input_multiple = INPUT_MULTIPLE

    # dpo.precompute_reference: the reference's log-probabilities from one forward-only pass
    # (micro-batches of 3: the second is filled up with repeats), the step with the policy alone
    table = reference_logps(reference, batch, range(4), 3, tokens.shape[1] - 1, "cpu")
    alone = PreferenceOptimisation(policy, None, DPOConfig(beta=beta))
    assert (alone.micro_batch_factor, objective.micro_batch_factor) == (2, 4)
    with torch.no_grad():
        outputs, loss_func = alone.forward_step(PreferenceBatch(chosen, rejected, table), policy)
        assert loss_func(outputs)[0].item() == pytest.approx(expected, rel=1e-5)
    assert abs(expected - math.log(2)) > 1e-3  # the two models differ: a real comparison
    for name, trl_name in [
        ("reward_chosen", "rewards/chosen"),
        ("reward_rejected", "rewards/rejected"),
        ("reward_margin", "rewards/margins"),
        ("reward_accuracy", "rewards/accuracies"),
        ("logp_chosen", "logps/chosen"),
        ("logp_rejected", "logps/rejected"),
    ]:
        assert ours[name].item() == pytest.approx(logged[trl_name], rel=1e-4, abs=1e-6), name


@pytest.mark.parametrize(
    "pool,micro,dp", [(range(13), 2, 2), (range(5, 17), 4, 3), (range(8), 8, 1)]
)
def test_reference_pass_covers_each_pair_once_in_equal_micro_batch_counts(pool, micro, dp):
    replicas = [micro_batches(pool, micro, dp, rank) for rank in range(dp)]
    assert len({len(batches) for batches in replicas}) == 1  # the pipelines stay in step
    real = [int(i) for batches in replicas for indices, n in batches for i in indices[:n]]
    assert sorted(real) == list(pool)
    assert all(len(indices) == micro for batches in replicas for indices, _ in batches)


def test_preference_batches_carry_the_reference_through_split_and_to():
    tokens = torch.arange(24).view(4, 6)
    mask = torch.ones(4, 5)
    reference = torch.arange(8.0).view(4, 2)
    batch = PreferenceBatch(TokenBatch(tokens, mask), TokenBatch(tokens + 1, mask), reference)
    halves = [half.to("cpu") for half in batch.split(3)]
    assert [len(h) for h in halves] == [3, 1]
    assert torch.equal(torch.cat([h.reference for h in halves]), reference)
    assert all(h.reference is None for h in PreferenceBatch(batch.chosen, batch.rejected).split(3))
    picked = batch.rows(torch.tensor([2, 0]))
    assert torch.equal(picked.rejected.tokens, tokens[[2, 0]] + 1)
    assert torch.equal(picked.reference, reference[[2, 0]])


def test_inputs_padded_to_a_multiple_carry_no_loss_on_the_added_targets():
    tokens = torch.arange(12).view(2, 6)  # 5 inputs
    mask = torch.tensor([[0, 1, 1, 0, 1], [1, 1, 1, 1, 1]]).float()
    padded = TokenBatch(tokens, mask).with_inputs_padded(4)
    assert padded.inputs.shape == (2, 8) and padded.labels.shape == padded.loss_mask.shape
    assert torch.equal(padded.tokens[:, :6], tokens)
    assert torch.equal(padded.tokens[:, 6:], tokens[:, -1:].expand(2, 3))
    assert torch.equal(padded.loss_mask, torch.cat([mask, torch.zeros(2, 3)], dim=1))
    assert padded.target_count() == TokenBatch(tokens, mask).target_count()
    every = TokenBatch(tokens).with_inputs_padded(4)  # no mask: every real target counts
    assert every.target_count() == 10 and every.loss_mask[:, 5:].sum() == 0
    even = TokenBatch(tokens[:, :5], mask[:, :4])
    assert even.with_inputs_padded(4) is even
    assert [padded_length(n, 8) for n in (1, 8, 1023, 1024)] == [8, 8, 1024, 1024]

"""Distillation runs under torchrun (gloo): TP=2 (with and without sequence parallelism), PP=2,
gradient accumulation and PP=2 with full activation recomputation give the single-process
losses part by part; target guidance lowers
the layer loss; a student made from its teacher starts as the teacher."""

import numpy as np
import pytest

from tests.distributed.train_runs import run, save_initial

PARTS = ("loss", "ce", "layer", "logits_kl")
ACCUMULATE = {"train.per_device_train_batch_size": 2, "train.gradient_accumulation_steps": 2}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    return save_initial(path, {"preset": "tiny-gpt-neox", "model.vocab_size": 200})


def distill_run(tmp_path, items, initial, teacher, name, nproc=1, **overrides):
    settings = {
        **({"train.init_from": initial} if initial else {}),
        "train.save_at_end": False,
        "train.max_steps": 4,
        "distill.teacher": teacher,
        "distill.alpha_layer_distill_loss": 15.0,
        "distill.alpha_logits_distill_loss": 1.0,
        "distill.distill_skip_last": 0,
        **overrides,
    }
    return run(tmp_path, items, name, nproc, **settings)


def parts(records):
    return {p: np.array([r[p] for r in records]) for p in PARTS}


@pytest.fixture(scope="module")
def single(tmp_path_factory, items, initial, teacher):
    return parts(distill_run(tmp_path_factory.mktemp("single"), items, initial, teacher, "one"))


@pytest.mark.parametrize(
    "nproc,layout",
    [
        (2, {"parallel.tensor": 2}),
        (2, {"parallel.tensor": 2, "parallel.sequence_parallel": True}),
        (2, {"parallel.pipeline": 2}),
        (1, ACCUMULATE),
        # blocks recomputed in backward, two micro-batches in flight through the pipeline
        (2, {"parallel.pipeline": 2, "train.recompute": "full", **ACCUMULATE}),
        (2, {"parallel.tensor": 2, "parallel.sequence_parallel": True, "train.recompute": "full"}),
    ],
    ids=["tp2", "tp2-sp", "pp2", "accumulation", "pp2-recompute", "tp2-sp-recompute"],
)
def test_parallel_layouts_give_the_single_process_losses(
    tmp_path, items, initial, teacher, single, nproc, layout
):
    got = parts(distill_run(tmp_path, items, initial, teacher, "par", nproc, **layout))
    for name in PARTS:
        np.testing.assert_allclose(got[name], single[name], rtol=2e-5, err_msg=name)
    assert single["layer"].min() > 0 and single["logits_kl"].min() > 0


def test_target_guidance_lowers_the_layer_loss(tmp_path, items, initial, teacher):
    """From a student unrelated to the teacher, CE + 15 · layer loss + KL brings the student's
    block outputs towards the teacher's within 12 steps."""
    guided = distill_run(tmp_path, items, initial, teacher, "guided", **{"train.max_steps": 12})
    layer = [r["layer"] for r in guided]
    assert max(layer[-3:]) < 0.7 * layer[0], layer


def test_a_student_made_from_the_teacher_starts_as_the_teacher(tmp_path, items, teacher):
    """init_from_attention copies every shared tensor: with no layer swapped the student is the
    teacher, so at step 1 its blocks and logits match exactly."""
    settings = {"model.layer_pattern": "AA", "train.init_from_attention": teacher}
    first = distill_run(
        tmp_path, items, None, teacher, "copy", **settings, **{"train.max_steps": 1}
    )
    assert first[0]["layer"] == 0.0 and abs(first[0]["logits_kl"]) < 1e-7


def test_a_bf16_teacher_follows_the_fp32_one_through_the_pipeline(
    tmp_path, items, initial, teacher, single
):
    """distill.teacher_precision=bf16 under an fp32 student: the losses stay within bf16
    rounding of the fp32 teacher's (and differ from them: the teacher really runs in bf16), and
    PP=2, where the teacher's half of the hidden states crosses stages in the student's dtype,
    gives the single-process values."""
    half = {"distill.teacher_precision": "bf16"}
    one = parts(distill_run(tmp_path, items, initial, teacher, "bf16", **half))
    for name in PARTS:
        np.testing.assert_allclose(one[name], single[name], rtol=3e-2, err_msg=name)
    assert not np.allclose(one["layer"], single["layer"], rtol=1e-6, atol=0)
    piped = parts(
        distill_run(tmp_path, items, initial, teacher, "pp2", 2, **{"parallel.pipeline": 2}, **half)
    )
    for name in PARTS:
        np.testing.assert_allclose(piped[name], one[name], rtol=2e-5, err_msg=name)

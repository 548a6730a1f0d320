"""On the GPU: the one-launch Adam kernel against a float64 computation of torch's arithmetic
(one step, within the storage dtype's rounding) and against torch's fused AdamW over several
steps, and through megatron's optimizer with and without fp32 master weights (where the step
also writes the bf16 model weights, in place of megatron's copy after the update)."""

import pytest
import torch
from megatron.core.optimizer import OptimizerConfig

from megatron_mamba.config import ParallelConfig, RunPrecision
from megatron_mamba.models.build import build_model
from megatron_mamba.models.presets import preset
from megatron_mamba.runtime import init_runtime
from megatron_mamba.training.adamw import (
    defer_grad_scale,
    use_one_launch_adam,
    write_model_weights_in_step,
)
from megatron_mamba.training.ddp import wrap_ddp
from megatron_mamba.training.optimizer import inner_optimizers, megatron_optimizer

pytestmark = pytest.mark.gpu
DEVICE = "cuda"
pytest.importorskip("triton")  # collected everywhere; the kernel module needs it

from megatron_mamba.kernels.adamw import BLOCK  # noqa: E402

# sizes below, at and above one block, and many small tensors (a model's norms and biases);
# the aligned ones (multiples of 8 elements in their own allocations) take the vectorised path
SIZES = [(1,), (BLOCK,), (BLOCK + 3,), (3 * BLOCK - 1,), (64, 97), *[(33,)] * 40]
ALIGNED_SIZES = [(8,), (BLOCK,), (BLOCK + 8,), (3 * BLOCK - 8,), (64, 96), *[(32,)] * 40]


@pytest.fixture(scope="module")
def runtime():
    return init_runtime(seed=0)


def _params(dtype, seed=0, sizes=SIZES):
    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(s, generator=generator, device=DEVICE).to(dtype))
        for s in sizes
    ]


def _groups(params, weight_decay=0.1):
    half = len(params) // 2
    return [
        {"params": params[:half], "weight_decay": weight_decay},
        {"params": params[half:], "weight_decay": 0.0},
    ]


def _spacing(x: torch.Tensor) -> torch.Tensor:
    """The distance between neighbouring values of x's dtype around x, in float64."""
    info = torch.finfo(x.dtype)  # eps: the spacing just above 1
    _, exponent = torch.frexp(x.float().abs().clamp_min(info.tiny))
    return torch.pow(2.0, (exponent - 1).double()) * info.eps


def _float64_step(p, g, m, v, *, lr, betas, eps, wd, decoupled, step):
    """torch's arithmetic in float64: (p, m, v) after the step, each with the sum of its terms'
    magnitudes (fp32 arithmetic errs relative to those, not to a result they cancel to)."""
    p, g, m, v = (t.double() for t in (p, g, m, v))
    decay = lr * wd * p if decoupled else 0 * p
    g = g if decoupled else g + wd * p
    m_terms = (betas[0] * m, (1 - betas[0]) * g)
    v_terms = (betas[1] * v, (1 - betas[1]) * g * g)
    m, v = sum(m_terms), sum(v_terms)
    denominator = v.sqrt() / (1 - betas[1] ** step) ** 0.5 + eps
    update = lr / (1 - betas[0] ** step) * m / denominator
    return [
        (p - decay - update, p.abs() + decay.abs() + update.abs()),
        (m, m_terms[0].abs() + m_terms[1].abs()),
        (v, v_terms[0] + v_terms[1]),
    ]


@pytest.mark.parametrize("decoupled", [True, False], ids=["adamw", "adam"])
@pytest.mark.parametrize(
    "param_dtype,grad_dtype",
    [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16)],
    ids=["fp32", "bf16"],
)
@pytest.mark.parametrize("aligned", [False, True], ids=["any-sizes", "aligned"])
@pytest.mark.parametrize("clip", [None, 0.37], ids=["unclipped", "clipped"])
def test_a_step_rounds_the_float64_update(
    runtime, clip, aligned, decoupled, param_dtype, grad_dtype
):
    """From a state already three steps old (moments nonzero, the bias corrections of step 4),
    with clipping's multiplication left to the kernel or none, every parameter and moment is
    float64's result rounded to its dtype: within one spacing of that dtype, plus fp32
    arithmetic's error (16 units of 2^-24 of its terms' magnitudes, the bias corrections'
    powers included)."""
    params = _params(param_dtype, sizes=ALIGNED_SIZES if aligned else SIZES)
    optimizer_class = torch.optim.AdamW if decoupled else torch.optim.Adam
    optimizer = optimizer_class(_groups(params), lr=3e-2, betas=(0.9, 0.95), eps=1e-8)
    assert use_one_launch_adam(optimizer)
    generator = torch.Generator(device=DEVICE).manual_seed(1)

    def new_grads():
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator, device=DEVICE).to(grad_dtype)

    for _ in range(3):
        new_grads()
        optimizer.step()
    new_grads()
    before = {}
    for p in params:
        state = optimizer.state[p]
        moments = (state["exp_avg"].clone(), state["exp_avg_sq"].clone())
        grad = p.grad.double() * (clip or 1.0)
        before[p] = (p.detach().clone(), grad, *moments)
    if clip is not None:  # clipping's multiplication left to the kernel
        assert defer_grad_scale(params, clip)
    optimizer.step()
    assert all(t.aligned == aligned for t in optimizer._one_launch_tables.values())
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            assert state["step"].item() == 4
            expected = _float64_step(
                *before[p],
                lr=3e-2,
                betas=(0.9, 0.95),
                eps=1e-8,
                wd=group["weight_decay"],
                decoupled=decoupled,
                step=4,
            )
            results = (p.detach(), state["exp_avg"], state["exp_avg_sq"])
            for name, got, (want, terms) in zip("pmv", results, expected, strict=True):
                bound = _spacing(got) + 16 * 2.0**-24 * terms
                excess = ((got.double() - want).abs() / bound).max().item()
                assert excess <= 1, (name, tuple(p.shape), excess)


def test_several_steps_follow_torchs_fused_adamw(runtime):
    """fp32 over five steps with a changing learning rate and a state reloaded midway (new
    addresses, new block tables): torch's fused AdamW's weights and moments within rounding."""
    reference, ours = _params(torch.float32), _params(torch.float32)
    torch_adam = torch.optim.AdamW(_groups(reference), lr=1e-2, fused=True)
    one_launch = torch.optim.AdamW(_groups(ours), lr=1e-2, fused=True)
    use_one_launch_adam(one_launch)
    generator = torch.Generator(device=DEVICE).manual_seed(2)
    for step in range(5):
        for a, b in zip(reference, ours, strict=True):
            a.grad = torch.randn(a.shape, generator=generator, device=DEVICE)
            b.grad = a.grad.clone()
        for optimizer in (torch_adam, one_launch):
            for group in optimizer.param_groups:
                group["lr"] = 1e-2 / (step + 1)
            optimizer.step()
        if step == 2:
            one_launch.load_state_dict(one_launch.state_dict())
    for a, b in zip(reference, ours, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(one_launch.state[b][key], torch_adam.state[a][key])


TINY = preset("tiny-llama", layer_pattern="MA")


LR = 1e-3


@pytest.mark.parametrize("master", [True, False], ids=["fp32-master", "bf16-no-master"])
def test_megatron_optimizer_with_it_follows_torchs_kernel(runtime, master):
    """A bf16 model through megatron's optimizer (fp32 master weights, or Adam on the bf16
    weights) with clipping, three steps: the same weights as with torch's fused kernel, within
    two bf16 spacings at the largest size the weight may have had on the way (|w| + 3 steps of
    at most 3·lr: roundings may differ by one at a step, and a weight may shrink since); a wrong
    update is larger, about lr."""
    model, twin = (
        build_model(TINY, ParallelConfig(), RunPrecision("bf16"), cpu_initialization=False)
        for _ in range(2)
    )
    model, twin = model.to(DEVICE), twin.to(DEVICE)
    twin.load_state_dict(model.state_dict())
    weights = []
    for one_launch, module in ((False, model), (True, twin)):
        ddp = wrap_ddp(module, grad_reduce_in_fp32=master)
        config = OptimizerConfig(
            optimizer="adam",
            lr=LR,
            weight_decay=0.1,
            clip_grad=0.5,
            bf16=master,
            params_dtype=torch.bfloat16,
        )
        optimizer = megatron_optimizer(ddp, config, one_launch_adam=one_launch)
        assert all(
            (type(inner).__name__ == "OneLaunchAdamW") == one_launch
            for inner in inner_optimizers(optimizer)
        )
        copies_taken = []
        if one_launch and master:  # the step writes the model weights: megatron copies none
            inner = inner_optimizers(optimizer)[0]

            def spy(mains, took=inner._took_every_copy, taken=copies_taken):
                taken.append(took(mains))
                return taken[-1]

            inner._took_every_copy = spy
        generator = torch.Generator(device=DEVICE).manual_seed(3)
        for _ in range(3):
            ddp.zero_grad_buffer()
            optimizer.zero_grad()
            for p in ddp.module.parameters():
                p.main_grad.copy_(torch.randn(p.shape, generator=generator, device=DEVICE))
            assert optimizer.step()[0]
        assert copies_taken == ([True] * 3 if one_launch and master else [])
        weights.append([p.detach().clone() for p in module.parameters()])
    names = [name for name, _ in model.named_parameters()]
    for name, got, want in zip(names, weights[1], weights[0], strict=True):
        largest = want.float().abs() + 3 * 3 * LR
        excess = ((got.double() - want.double()).abs() / (2 * _spacing(largest.bfloat16()))).max()
        excess = excess.item()
        assert excess <= 1, (name, excess)


def test_a_step_writes_each_updated_weight_rounded_into_its_copy():
    params = _params(torch.float32, sizes=ALIGNED_SIZES[:5] + SIZES[:3])
    copies = [torch.zeros_like(p, dtype=torch.bfloat16) for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-2, fused=True)
    use_one_launch_adam(optimizer)
    optimizer._model_weights = dict(zip(params, copies, strict=True))  # by identity: Parameters
    for p in params:
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in params]
    optimizer.step()
    assert optimizer._took_every_copy(params)
    for p, copy, old in zip(params, copies, before, strict=True):
        assert not torch.equal(p, old)
        assert torch.equal(copy, p.detach().bfloat16())


def test_under_master_weights_megatrons_copy_runs_only_where_the_step_wrote_not_all(runtime):
    model = build_model(TINY, ParallelConfig(), RunPrecision("bf16"), cpu_initialization=False)
    ddp = wrap_ddp(model.to(DEVICE))
    config = OptimizerConfig(
        optimizer="adam", lr=LR, clip_grad=0.5, bf16=True, params_dtype=torch.bfloat16
    )
    optimizer = megatron_optimizer(ddp, config, one_launch_adam=True)
    assert not write_model_weights_in_step(megatron_optimizer(ddp, config))  # torch's Adam
    inner = inner_optimizers(optimizer)[0]
    (part,) = getattr(optimizer, "chained_optimizers", [optimizer])  # megatron may chain one
    masters = [p for group in part.fp32_from_float16_groups for p in group]
    models = [p for group in part.float16_groups for p in group]
    assert all(inner._model_weights[m] is p for m, p in zip(masters, models, strict=True))

    def changed_by_the_copy(written):
        for main in masters:
            main.data.add_(1.0)
        inner._model_weights_written = {id(p) for p in written}
        before = [p.detach().clone() for p in models]
        part._copy_main_params_to_model_params()
        assert "_model_weights_written" not in inner.__dict__  # used once
        return [not torch.equal(p, b) for p, b in zip(models, before, strict=True)]

    assert not any(changed_by_the_copy(masters))
    assert all(changed_by_the_copy(masters[1:]))
    assert all(changed_by_the_copy([]))

"""The faster CPU linear kernels: same results as ``F.linear``, patched only while used."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from langchain_divconq.local.engine.cpu_kernels import fast_cpu_linears, onednn_available  # noqa: E402


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.Linear(96, 40, bias=False))


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("rows", [1, 2, 7, 17, 40])
def test_kernels_match_linear(onednn: bool, rows: int) -> None:
    if onednn and not onednn_available():
        pytest.skip("this torch build has no oneDNN")
    model = _model()
    x = torch.randn(1, rows, 48)
    expected = model(x)
    with torch.inference_mode(), fast_cpu_linears(model, onednn=onednn):
        assert all("forward" in vars(m) for m in model)
        got = model(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert all("forward" not in vars(m) for m in model)  # stock forward restored


def test_changed_weights_are_repacked() -> None:
    if not onednn_available():
        pytest.skip("this torch build has no oneDNN")
    model = _model()
    x = torch.randn(3, 48)
    with torch.inference_mode(), fast_cpu_linears(model):
        first = model(x)
    with torch.no_grad():
        model[0].weight.mul_(2)  # an optimizer step would do the same
    with torch.inference_mode(), fast_cpu_linears(model):
        second = model(x)
    assert torch.allclose(second, model(x).detach(), atol=1e-5)
    assert not torch.allclose(first, second)


def test_nested_use_restores_once() -> None:
    model = _model()
    with fast_cpu_linears(model):
        with fast_cpu_linears(model):
            pass
        assert "forward" in vars(model[0])  # the outer call still runs patched
    assert "forward" not in vars(model[0])


def test_other_dtypes_keep_the_stock_kernel() -> None:
    model = _model().to(torch.bfloat16)
    x = torch.randn(2, 48, dtype=torch.bfloat16)
    expected = model(x)
    with torch.inference_mode(), fast_cpu_linears(model):
        assert torch.equal(model(x), expected)


def test_layers_onednn_cannot_reorder_use_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_divconq.local.engine import cpu_kernels

    monkeypatch.setattr(cpu_kernels, "_packed_weight", lambda module: None)
    model = _model()
    x = torch.randn(5, 48)
    expected = model(x)
    with torch.inference_mode(), fast_cpu_linears(model, onednn=True):
        got = model(x)
    assert torch.allclose(got, expected, atol=1e-5)

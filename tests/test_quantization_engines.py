"""Real int8 engines, compare_engines and the package's public names (notebook 06, section 4).

Engines are checked against the fp32 model's logits (int8 tolerance), never on speed.
"""
import subprocess
import sys

import pytest
import torch
import torch._inductor.config as inductor_config
from torch import nn

import kdcourse as kd
from kdcourse import quantization as Q
from kdcourse.quantization import compare as compare_module

OLD_PUBLIC_NAMES = [
    "QParams", "check_bits", "qparams", "quantize", "dequantize", "fake_quantize", "FakeQuant", "minmax_range",
    "percentile_range", "mse_range", "observe", "OBSERVERS", "quant_mse", "fold_batchnorm", "QuantLayer",
    "quantize_model", "calibrate", "recovered_share", "layer_macs", "Engine", "compiled_fp32", "pt2e_int8",
    "torchao_linear_int8", "export_onnx", "ort_model", "ort_fp32", "ort_static_int8", "ort_dynamic_int8",
    "FP32_REFERENCE", "engine_accuracy", "compare_engines"]


def test_every_name_notebook_06_used_is_still_public():
    import kdcourse.quantization as package
    for name in OLD_PUBLIC_NAMES:
        assert name in package.__all__ and getattr(kd.quantization, name) is getattr(package, name), name
    assert Q.recovered_share is kd.stats.recovered_share  # one home each, re-exported
    assert Q.layer_macs is kd.benchmark.layer_macs


def test_importing_the_package_has_no_side_effects():
    code = ("import sys, torch._inductor.config as c; before = c.freezing; import kdcourse.quantization; "
            "print(c.freezing == before, 'torchao' in sys.modules, 'onnxruntime' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False", "False"]  # no global setting changed, heavy engines imported only when used


def _int8_close(out, ref):
    """Int8 tolerance: every logit within 5 % of the largest fp32 logit magnitude."""
    assert out.shape == ref.shape
    assert float((out - ref).abs().max()) <= 0.05 * float(ref.abs().max()), (out - ref).abs().max()


@pytest.fixture(scope="module")
def small_cnn():
    torch.manual_seed(0)
    model = kd.build_model("cnn", (1, 8, 8), width=2, seed=0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 8, 8) + 0.5)  # non-trivial BatchNorm statistics
    model.eval()
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        ref = model(x)
    return model, x, ref


# ----------------------------------------------------------------------------- Inductor freezing
def test_inductor_freezing_is_restored_after_the_block_even_on_error():
    before = inductor_config.freezing
    for previous in (False, True):
        inductor_config.freezing = previous
        try:
            with pytest.raises(RuntimeError, match="boom"), Q.inductor_freezing():
                assert inductor_config.freezing is True
                raise RuntimeError("boom")
            assert inductor_config.freezing is previous
            with Q.inductor_freezing(False):
                assert inductor_config.freezing is False
            assert inductor_config.freezing is previous
        finally:
            inductor_config.freezing = before


def test_pt2e_int8_compiled_agrees_with_fp32_and_leaves_freezing_as_it_was(small_cnn):
    model, x, ref = small_cnn
    before = inductor_config.freezing
    engine = Q.pt2e_int8(model, x, compile=True, batch_sizes=(1, 4))
    assert inductor_config.freezing == before
    assert engine.name == "pt2e_x86" and engine.compile_seconds > 0 and engine.build_seconds > 0
    with torch.inference_mode():
        for b in (1, 4):
            _int8_close(engine(x[:b]), ref[:b])
    assert inductor_config.freezing == before


def test_pt2e_int8_without_compile_is_int8_close_and_smaller(small_cnn):
    model, x, ref = small_cnn
    engine = Q.pt2e_int8(model, x, compile=False)
    with torch.no_grad():
        _int8_close(engine(x), ref)
    assert engine.size_bytes < kd.model_size_bytes(model)
    with pytest.raises(ValueError, match="non-empty calibration set"):
        Q.pt2e_int8(model, x[:0])
    with pytest.raises(ValueError, match="infinite"):
        Q.pt2e_int8(model, torch.full_like(x, float("inf")))


def test_compile_errors_restore_freezing():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("broken forward")
    before = inductor_config.freezing
    with pytest.raises(RuntimeError, match="broken forward"):
        Q.compiled_fp32(Broken(), torch.zeros(2, 3), batch_sizes=(1,))
    assert inductor_config.freezing == before


# ----------------------------------------------------------------------------- torchao and ONNX Runtime
def test_torchao_linear_quantizes_only_the_linear_layers(small_cnn):
    model, x, ref = small_cnn
    engine = Q.torchao_linear_int8(model)
    qmodel = engine.fn
    assert type(qmodel.head.weight) is not nn.Parameter and type(qmodel.embed[1].weight) is not nn.Parameter
    assert type(qmodel.blocks[0][0].weight) is nn.Parameter  # convolutions stay fp32
    with torch.no_grad():
        _int8_close(engine(x), ref)
    with pytest.raises(ValueError, match="example input"):
        Q.torchao_linear_int8(model, compile=True)


def test_ort_engines_match_fp32(small_cnn):
    model, x, ref = small_cnn
    fp32 = Q.ort_fp32(model, x[:2])
    torch.testing.assert_close(fp32(x), ref, atol=1e-5, rtol=1e-4)  # same maths, another runtime
    static, dynamic = Q.ort_static_int8(model, x), Q.ort_dynamic_int8(model, x[:2])
    for engine in (static, dynamic):
        _int8_close(engine(x), ref)
    assert static.size_bytes < fp32.size_bytes
    with pytest.raises(ValueError, match="non-empty calibration set"):
        Q.ort_static_int8(model, x[:0])


def test_export_onnx_and_ort_model_round_trip(small_cnn, tmp_path):
    model, x, ref = small_cnn
    path = Q.export_onnx(model, x[:2], tmp_path / "cnn.onnx")
    run = Q.ort_model((tmp_path / "cnn.onnx").read_bytes(), threads=1)
    assert path == str(tmp_path / "cnn.onnx")
    torch.testing.assert_close(run(x[:5]), ref[:5], atol=1e-5, rtol=1e-4)  # batch dimension is dynamic


# ----------------------------------------------------------------------------- engine_accuracy, compare_engines
def test_each_int8_engine_has_an_fp32_reference_of_the_same_runtime():
    fp32_names = {"fp32", "fp32_compiled", "ort_fp32"}
    assert set(Q.FP32_REFERENCE.values()) <= fp32_names
    assert Q.FP32_REFERENCE["pt2e_x86"] == "fp32_compiled" and Q.FP32_REFERENCE["ort_static"] == "ort_fp32"


class _Fixed(nn.Module):
    """Predicts class (row index % 3) for rows 0..n-1 of its input; records the batch shapes it saw."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(1)
        self.shapes, self.modes = [], []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        self.modes.append(self.training)
        return nn.functional.one_hot(x[:, 0].long() % 3, 3).float()


def test_engine_accuracy_pads_the_last_batch_and_restores_modes():
    x = torch.arange(10.0).reshape(10, 1)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 1, 1, 1, 1])  # the first 7 are right
    model = _Fixed().train()
    model.bn.eval()
    assert Q.engine_accuracy(model, x, y, batch_size=4) == pytest.approx(70.0)
    assert model.shapes == [(4, 1)] * 3 and model.modes == [False] * 3  # padded to 4, in eval mode
    assert model.training and not model.bn.training  # each submodule's mode restored


def test_compare_engines_ratios_from_known_latencies(monkeypatch):
    ms = {"fp32": 4.0, "ort_fp32": 2.0, "ort_static": 1.0}
    monkeypatch.setattr(compare_module, "measure_latency", lambda models, x, **kw: {n: ms[n] * len(x) for n in models})
    module = _Fixed().train()
    sizes = {"ort_fp32": 800, "ort_static": 200}
    engines = {"fp32": module, **{n: Q.Engine(n, _Fixed(), sizes[n]) for n in sizes}}
    x, y = torch.arange(6.0).reshape(6, 1), torch.tensor([0, 1, 2, 0, 1, 1])
    rows = compare_module.compare_engines(engines, "ort_fp32", x, y, batch_sizes=(1, 4))
    assert rows["ort_static"]["acc"] == pytest.approx(100 * 5 / 6)
    assert rows["ort_static"]["latency_ratio_b4"] == pytest.approx(0.5) and rows["fp32"]["latency_ratio_b1"] == 2.0
    assert rows["ort_static"]["size_ratio"] == 0.25 and rows["ort_static"]["ms_b4"] == 4.0
    assert rows["ort_static"]["reference"] == "ort_fp32" and rows["ort_static"]["own_ratio_b1"] == 0.5
    assert "reference" not in rows["fp32"] and "reference" not in rows["ort_fp32"]
    assert module.training and module.modes == [False, False]  # two batches of 4, in eval mode; mode restored
    with pytest.raises(ValueError, match="baseline"):
        Q.compare_engines({"a": module}, "b", x, y)


def test_compare_engines_measures_real_engines_together(small_cnn):
    model, x, _ = small_cnn
    y = model(x).argmax(1)
    model.train()
    rows = Q.compare_engines({"fp32": model, "ort_fp32": Q.ort_fp32(model, x[:2])}, "fp32", x, y,
                             batch_sizes=(1, 16), reps=2, warmup=1)
    assert model.training  # not left in eval mode
    model.eval()
    assert rows["fp32"]["acc"] == 100.0 and rows["ort_fp32"]["acc"] == 100.0  # fp32 scored in eval mode
    assert all(rows[n][f"ms_b{b}"] > 0 for n in rows for b in (1, 16))


# ----------------------------------------------------------------------------- pt2e on residual blocks
class _ReusedReLU(nn.Module):
    """A ResNet-style basic block that calls one nn.ReLU module twice, as torchvision's ResNets do."""

    def __init__(self, c=4):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        out = self.relu(self.conv1(x))
        out = self.relu(self.conv2(out) + x)        # the same module again, after the residual addition
        return self.head(out.mean((2, 3)))


def test_pt2e_int8_handles_a_relu_module_called_twice_and_names_the_fix_when_not_strict():
    model, x = _ReusedReLU().eval(), torch.randn(16, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    engine = Q.pt2e_int8(model, x, compile=False)            # strict export (default): used to fail
    with torch.no_grad():
        _int8_close(engine(x), ref)
        _int8_close(engine(x[:3]), ref[:3])                  # the batch dimension stays dynamic
    with pytest.raises(ValueError, match="more than one output node.*strict=True"):
        Q.pt2e_int8(model, x, compile=False, strict=False)


def test_pt2e_int8_strict_and_non_strict_exports_agree_bit_for_bit_on_the_course_cnn(small_cnn):
    model, x, _ = small_cnn
    with torch.no_grad():
        strict, loose = Q.pt2e_int8(model, x, compile=False)(x), Q.pt2e_int8(model, x, compile=False, strict=False)(x)
    assert torch.equal(strict, loose)

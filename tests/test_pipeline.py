"""Chaining compression stages (notebook 07): transfer set, training stages, export round trips, stage table."""
import math
import tempfile
import zipfile

import pytest
import torch

import kdcourse as kd
from kdcourse import pipeline
from kdcourse import quantization as Q
from kdcourse.stats import mean_std


def _images(n=6, seed=0, shape=(1, 8, 8)):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- transfer set
def test_random_shifts_moves_a_single_pixel_by_the_drawn_offset():
    x = torch.zeros(200, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0                                   # one bright pixel in the centre
    out = pipeline.random_shifts(x, max_shift=2, generator=torch.Generator().manual_seed(0), fill=0.0)
    pos = out.flatten(1).argmax(1)
    dy, dx = pos // 9 - 4, pos % 9 - 4
    assert (out.flatten(1).sum(1) == 1).all()             # the pixel is moved, never lost or duplicated
    assert dy.abs().max() == 2 and dx.abs().max() == 2    # every offset in [-2, 2] ...
    assert len(set(zip(dy.tolist(), dx.tolist()))) == 25  # ... and all 25 of them drawn among 200 images


def test_random_shifts_fills_with_the_background_and_keeps_content():
    x = _images(4) + 5.0
    g = torch.Generator().manual_seed(1)
    out = pipeline.random_shifts(x, max_shift=1, generator=g)
    g = torch.Generator().manual_seed(1)
    dy, dx = torch.randint(-1, 2, (2, 4), generator=g)     # the offsets the function draws
    for i in range(4):
        a, b = int(dy[i]), int(dx[i])
        want = torch.full_like(x[i], float(x.min()))
        src = x[i][:, max(0, -a):8 - max(0, a), max(0, -b):8 - max(0, b)]
        want[:, max(0, a):max(0, a) + src.shape[1], max(0, b):max(0, b) + src.shape[2]] = src
        torch.testing.assert_close(out[i], want)


def test_zero_shift_is_a_copy_and_bad_arguments_are_named():
    x = _images()
    out = pipeline.random_shifts(x, max_shift=0)
    torch.testing.assert_close(out, x)
    assert out.data_ptr() != x.data_ptr()
    with pytest.raises(ValueError, match="max_shift"):
        pipeline.random_shifts(x, max_shift=8)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        pipeline.random_shifts(torch.zeros(3, 40), max_shift=1)
    with pytest.raises(ValueError, match="copies"):
        pipeline.transfer_set(x, copies=0)


def test_transfer_set_starts_with_the_originals_and_is_reproducible():
    x = _images(5)
    xs = pipeline.transfer_set(x, copies=3, max_shift=2, seed=4)
    assert xs.shape == (15, 1, 8, 8)
    torch.testing.assert_close(xs[:5], x)
    torch.testing.assert_close(xs, pipeline.transfer_set(x, copies=3, max_shift=2, seed=4))
    assert not torch.equal(xs, pipeline.transfer_set(x, copies=3, max_shift=2, seed=5))


# ----------------------------------------------------------------------------- training stages
def _toy(n=600, seed=0):
    """A 4-class problem a small CNN learns in two epochs: the class is the bright quadrant."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.3
    for c in range(4):
        r, q = divmod(c, 2)
        x[y == c, 0, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 1.5
    return x, y


def _cnn(seed=0, width=4):
    return kd.build_model("cnn", (1, 8, 8), width=width, n_classes=4, seed=seed)


def test_two_epoch_toy_learns_with_labels_and_with_teacher_logits_only():
    x, y = _toy()
    xt, yt = _toy(200, seed=1)
    scratch = pipeline.train_student(_cnn(), x, y=y, epochs=2, lr=3e-3, batch_size=32)
    teacher_logits = 8.0 * torch.nn.functional.one_hot(y, 4).float()   # a confident, correct teacher
    distilled = pipeline.train_student(_cnn(), x, teacher_logits=teacher_logits, epochs=2, lr=3e-3, batch_size=32)
    assert kd.evaluate(scratch, (xt, yt)) >= 90
    assert kd.evaluate(distilled, (xt, yt)) >= 90          # learned without reading a single label
    assert not scratch.training


def test_train_student_with_alpha_one_is_plain_cross_entropy():
    x, y = _toy(256)
    a = pipeline.train_student(_cnn(), x, y=y, epochs=1, seed=3)
    b = pipeline.train_student(_cnn(), x, y=y, teacher_logits=torch.randn(256, 4), alpha=1.0, epochs=1, seed=3)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)                  # teacher logits ignored when alpha = 1


def test_train_student_rejects_missing_or_misaligned_targets():
    x, y = _toy(64)
    with pytest.raises(ValueError, match="labels y"):
        pipeline.train_student(_cnn(), x, epochs=1)
    with pytest.raises(ValueError, match="rows"):
        pipeline.train_student(_cnn(), x, y=y[:10], epochs=1)
    with pytest.raises(ValueError, match="alpha"):
        pipeline.train_student(_cnn(), x, teacher_logits=torch.randn(64, 4), alpha=0.5, epochs=1)


def test_prune_and_recover_gives_the_exact_smaller_architecture_and_leaves_the_input_alone():
    x, y = _toy()
    model = pipeline.train_student(_cnn(width=8), x, y=y, epochs=1, lr=3e-3, batch_size=32)
    before = [p.clone() for p in model.parameters()]
    small = pipeline.prune_and_recover(model, x[:1], 0.5, x=x, teacher_logits=kd.predict(model, x), epochs=1,
                                      batch_size=32)
    # width 8 -> convs 8 and 16 channels, embed 32; half the channels of each: 4, 8, 16
    want = 4 * 1 * 9 + 4 + 8 * 4 * 9 + 8 + 16 * 8 * 2 * 2 + 16 + 4 * 16 + 4 + 2 * (4 + 8)   # + BN scale/shift
    assert kd.count_params(small) == want
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))
    assert kd.evaluate(small, _toy(200, seed=1)) >= 85


# ----------------------------------------------------------------------------- export and reload
def _archive_tensor_bytes(path):
    """Bytes of the tensors stored in a torch.export archive (its data/weights entries)."""
    with zipfile.ZipFile(path) as z:
        return sum(i.file_size for i in z.infolist() if "/data/weights/weight_" in i.filename)


@pytest.fixture
def trained_cnn():
    x, y = _toy()
    return pipeline.train_student(_cnn(width=8), x, y=y, epochs=2, lr=3e-3, batch_size=32), x


def test_saved_program_reloads_with_identical_logits_at_any_batch(tmp_path, trained_cnn):
    model, x = trained_cnn
    size = pipeline.save_program(model, x[:2], tmp_path / "m.pt2")
    assert size == (tmp_path / "m.pt2").stat().st_size > 0
    loaded = pipeline.load_program(tmp_path / "m.pt2")
    with torch.no_grad():
        for b in (1, 7):
            torch.testing.assert_close(loaded(x[:b]), model(x[:b]))
    torch.testing.assert_close(kd.predict(loaded, x), kd.predict(model, x))   # kd.predict may call .eval() on it
    with pytest.raises(FileNotFoundError):
        pipeline.load_program(tmp_path / "missing.pt2")


def test_int8_program_and_int8_onnx_file_reload_within_int8_tolerance(tmp_path, trained_cnn):
    model, x = trained_cnn
    with torch.no_grad():
        ref = model(x[:64])
    step = float(ref.abs().max()) / 127                           # one int8 step of the output range
    pt2e = Q.pt2e_int8(model, x[:128], compile=False)
    pipeline.save_program(model, x[:2], tmp_path / "fp32.pt2")
    pipeline.save_program(pt2e.fn, x[:2], tmp_path / "int8.pt2")
    stored = {k: _archive_tensor_bytes(tmp_path / f"{k}.pt2") for k in ("fp32", "int8")}
    assert stored["int8"] < 0.4 * stored["fp32"]       # int8 weights replace the fp32 ones, not added to them
    loaded = pipeline.load_program(tmp_path / "int8.pt2")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x[:64]), pt2e.fn(x[:64]))   # the file holds the same program
        assert (loaded(x[:64]) - ref).abs().max() < 8 * step            # and it is int8-close to fp32
    size = pipeline.save_onnx_int8(model, x[:128], tmp_path / "int8.onnx")
    assert size == (tmp_path / "int8.onnx").stat().st_size
    out = pipeline.load_onnx(tmp_path / "int8.onnx")(x[:64])
    assert (out - ref).abs().max() < 8 * step
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.95
    full = pipeline.save_onnx_int8(model, x[:128], tmp_path / "debug.onnx", strip=False)
    assert size < full                                              # stripping removes only debugging data ...
    torch.testing.assert_close(pipeline.load_onnx(tmp_path / "debug.onnx")(x[:64]), out)   # ... not the model


def test_int8_onnx_stores_weights_as_int8():
    import onnx
    model = kd.build_model("cnn", (1, 28, 28), width=16, seed=0).eval()   # the teacher's architecture
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        size = pipeline.save_onnx_int8(model, x, f"{tmp}/t.onnx")
        proto = onnx.load(f"{tmp}/t.onnx")
    int8 = sum(len(t.raw_data) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert int8 == weights                                          # one byte per weight
    assert size < 0.3 * kd.model_size_bytes(model)                  # about a quarter of the fp32 file


# ----------------------------------------------------------------------------- the stage table
def test_cumulative_factors_are_exact_and_telescope():
    sizes = [400_000, 100_000, 25_000, 8_000]
    assert pipeline.cumulative_factors(sizes) == [1.0, 4.0, 16.0, 50.0]
    steps = [a / b for a, b in zip(sizes, sizes[1:])]
    assert math.isclose(math.prod(steps), pipeline.cumulative_factors(sizes)[-1])
    with pytest.raises(ValueError, match="positive"):
        pipeline.cumulative_factors([100, 0])


def _stages():
    return [dict(stage="teacher", params=1000, size_bytes=4000, accs=[97.0, 97.0, 97.0], ms_b1=1.0, ms_b256=40.0),
            dict(stage="student", params=250, size_bytes=1000, accs=[96.0, 96.5, 97.0], ms_b1=0.5, ms_b256=10.0),
            dict(stage="int8", size_bytes=200, accs=[95.0, 96.0, 96.5], ms_b1=0.6, ms_b256=5.0)]


def test_stage_table_ratios_factors_and_seed_statistics():
    rows = pipeline.stage_table(_stages())
    assert [r["size_factor"] for r in rows] == [1.0, 4.0, 20.0]
    assert [r["step_factor"] for r in rows] == [1.0, 4.0, 5.0]
    assert rows[2]["speedup_b256"] == 8.0 and rows[2]["latency_ratio_b1"] == 0.6
    assert (rows[1]["acc"], rows[1]["acc_std"]) == mean_std([96.0, 96.5, 97.0])
    assert rows[0]["acc_std"] == 0.0
    relative = pipeline.stage_table(_stages(), baseline="student")
    assert relative[1]["size_factor"] == 1.0 and relative[0]["speedup_b256"] == 0.25
    text = pipeline.format_table(rows)
    assert len(text.splitlines()) == 4 and "20.0" in text
    with pytest.raises(KeyError, match="baseline"):
        pipeline.stage_table(_stages(), baseline="nope")
    with pytest.raises(KeyError, match="accs"):
        pipeline.stage_table([dict(stage="x", size_bytes=1)])


def test_pareto_front_on_a_known_set_and_independent_of_order():
    acc = [97.0, 96.0, 96.5, 90.0, 96.0]
    cost = [10.0, 2.0, 5.0, 1.0, 3.0]          # point 4 is beaten by point 1 (same acc, cheaper)
    assert pipeline.pareto_front(acc, cost) == [3, 1, 2, 0]
    perm = [4, 2, 0, 3, 1]
    front = pipeline.pareto_front([acc[i] for i in perm], [cost[i] for i in perm])
    assert sorted(perm[i] for i in front) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="equal length"):
        pipeline.pareto_front([1.0], [1.0, 2.0])


def test_smallest_within_picks_the_smallest_row_that_keeps_the_accuracy():
    rows = pipeline.stage_table(_stages())
    # mean accuracies: teacher 97.0, student 96.5, int8 95.83
    assert pipeline.smallest_within(rows, reference_acc=97.0, max_drop=1.5)["stage"] == "int8"
    assert pipeline.smallest_within(rows, reference_acc=97.0, max_drop=1.0)["stage"] == "student"
    assert pipeline.smallest_within(rows, reference_acc=97.0, max_drop=0.1)["stage"] == "teacher"
    assert pipeline.smallest_within(rows, reference_acc=99.0, max_drop=0.1) is None
    with pytest.raises(ValueError, match="max_drop"):
        pipeline.smallest_within(rows, reference_acc=97.0, max_drop=-1)

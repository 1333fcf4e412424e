"""Tests of kdcourse.lm: tokenizer, task, the GPT's causal mask and cache, sampling, token-level losses, cache."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from kdcourse import lm
from kdcourse.lm import task


def tiny_gpt(seed=0, **kw):
    return lm.GPT(len(lm.tokenizer), **{"d_model": 16, "n_layers": 2, "n_heads": 2, "max_len": 32, **kw}, seed=seed)


# ---- tokenizer and task ------------------------------------------------------------------------
def test_tokenizer_round_trips_every_symbol_and_rejects_unknown_ones():
    text = "3*7+2*9*3+4=1;3;7;1;#5$"
    assert lm.tokenizer.decode(lm.tokenizer.encode(text)) == text
    assert lm.tokenizer.decode(lm.tokenizer.encode(lm.VOCAB), strip=False) == lm.VOCAB
    assert lm.tokenizer.decode([lm.PAD, 2, lm.EOS, 3]) == "0$"      # pads dropped, cut after EOS
    with pytest.raises(KeyError, match="'x'"):
        lm.tokenizer.encode("3x4")


def test_the_worked_example_of_the_issue():
    q = "3*7+2*9*3+4="
    assert lm.solve(q) == [1, 3, 7, 1, 5]
    assert lm.scratchpad(q) == "1;3;7;1;#5$" and lm.completion(q, cot=False) == "#5$"
    assert lm.final_answer("1;3;7;1;#5$") == 5 and lm.final_answer("1;3;") is None
    assert lm.is_correct(q, "9;9;9;9;#5$") and not lm.is_correct(q, "1;3;7;1;#4$")
    with pytest.raises(ValueError, match="malformed"):
        lm.solve("3/7=")


def test_questions_are_distinct_reproducible_and_respect_exclude():
    a = lm.make_questions(300, seed=1)
    assert len(set(a)) == 300 and a == lm.make_questions(300, seed=1)
    b = lm.make_questions(300, seed=2, exclude=a)
    assert not set(a) & set(b)
    pairs = [(q[k], q[k + 1]) for q in a for k in range(1, len(q) - 1, 2)]
    assert {d for op, d in pairs if op == "*"} == set("379")
    assert {d for op, d in pairs if op == "+"} == set("123456789")
    assert all(len(q) == 12 and q.endswith("=") for q in a)       # 5 operations by default


def test_encode_examples_puts_loss_only_on_the_completion():
    q = "3*7+2*9*3+4="
    x, y = lm.encode_examples([q], [lm.completion(q, cot=False)], length=16)
    assert x.shape == y.shape == (1, 16)
    # the first target is the token after '=', i.e. '#', at input position len(q) - 1
    assert (y[0, :len(q) - 1] == -100).all() and lm.tokenizer.decode(y[0, len(q) - 1:len(q) + 2]) == "#5$"
    assert (y[0, len(q) + 2:] == -100).all()
    with pytest.raises(ValueError, match="length"):
        lm.encode_examples([q], [lm.scratchpad(q)], length=8)


# ---- the model ---------------------------------------------------------------------------------
def test_logits_have_shape_b_l_v_and_the_mask_is_causal():
    model = tiny_gpt().eval()
    x = torch.randint(0, len(lm.tokenizer), (3, 12), generator=torch.Generator().manual_seed(0))
    out = model(x)
    assert out.shape == (3, 12, len(lm.tokenizer))
    x2 = x.clone()
    x2[:, 7] = (x2[:, 7] + 1) % len(lm.tokenizer)          # change a future token
    out2 = model(x2)
    torch.testing.assert_close(out2[:, :7], out[:, :7])     # no earlier logit moves
    assert not torch.allclose(out2[:, 7:], out[:, 7:])      # later ones do (the test can fail)


def test_kv_cache_gives_the_same_logits_as_a_full_forward():
    model = tiny_gpt().eval()
    x = torch.randint(0, len(lm.tokenizer), (2, 10), generator=torch.Generator().manual_seed(1))
    full = model(x)
    logits, past = model.forward_cached(x[:, :6])
    steps = [logits]
    for k in range(6, 10):
        logits, past = model.forward_cached(x[:, k:k + 1], None, past)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)


def test_left_padding_gives_the_same_logits_as_no_padding():
    model = tiny_gpt().eval()
    ids = torch.tensor([lm.tokenizer.encode("3*7+2=")])
    padded, valid = lm.encode_prompts(["3*7+2=", "1+1+1+1="])
    assert not valid[0, :2].any() and valid[0, 2:].all() and valid[1].all()
    torch.testing.assert_close(model(padded, valid)[0, 2:], model(ids)[0], atol=1e-5, rtol=1e-4)


def test_too_long_sequences_are_refused_and_generation_is_capped():
    model = tiny_gpt(max_len=16).eval()
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 17, dtype=torch.long))
    prompts, valid = lm.encode_prompts(["3*7+2*9*3+4="])       # 12 tokens, untrained model: EOS may never come
    out = lm.generate(model, prompts, valid, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert out.shape[1] <= 16 - 12
    with pytest.raises(ValueError, match="no room"):
        lm.generate(model, torch.zeros(1, 16, dtype=torch.long))


def test_greedy_decoding_is_deterministic_and_sampling_follows_its_seed():
    model = tiny_gpt(seed=3).eval()
    prompts, valid = lm.encode_prompts(lm.make_questions(8, seed=0))
    assert torch.equal(lm.generate(model, prompts, valid), lm.generate(model, prompts, valid))
    s = [lm.generate(model, prompts, valid, temperature=2.0, generator=torch.Generator().manual_seed(k))
         for k in (0, 0, 1)]
    assert torch.equal(s[0], s[1]) and not torch.equal(s[0], s[2])


def test_greedy_generation_matches_step_by_step_argmax_without_cache():
    model = tiny_gpt(seed=4).eval()
    prompts, valid = lm.encode_prompts(["3*7+2="])
    out = lm.generate(model, prompts, valid, max_new=5)
    seq = prompts
    for _ in range(out.shape[1]):
        seq = torch.cat([seq, model(seq)[:, -1:].argmax(-1)], 1)
    want = seq[0, prompts.shape[1]:].tolist()
    if lm.EOS in want:
        k = want.index(lm.EOS)
        want = want[:k + 1] + [lm.PAD] * (len(want) - k - 1)
    assert out[0].tolist() == want


def test_generation_stops_after_eos_and_pads():
    model = tiny_gpt().eval()
    with torch.no_grad():
        model.head.bias.fill_(0.0)
        model.head.weight.zero_()
        model.head.bias[lm.EOS] = 10.0                     # EOS always wins
    out = lm.generate(model, *lm.encode_prompts(["1+2=", "3*3="]))
    assert out.tolist() == [[lm.EOS], [lm.EOS]]


# ---- token-level losses ------------------------------------------------------------------------
def _logits(seed, shape=(3, 5, 7)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


def test_forward_kl_matches_torch_kl_div_on_the_unmasked_tokens():
    s, t = _logits(0), _logits(1)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False
    mask[2, 0] = False
    want = F.kl_div(F.log_softmax(s[mask], -1), F.log_softmax(t[mask], -1), reduction="batchmean", log_target=True)
    torch.testing.assert_close(lm.token_forward_kl(s, t, mask), want)
    torch.testing.assert_close(lm.token_reverse_kl(s, t, mask), lm.token_forward_kl(t, s, mask))


def test_masked_losses_ignore_whatever_sits_under_the_padding():
    s, t = _logits(0), _logits(1)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[:, 3:] = False
    s2, t2 = s.clone(), t.clone()
    s2[:, 3:] = 1e3 * torch.randn(3, 2, 7)                  # garbage under the padding
    t2[:, 3:] = -5.0
    for fn in (lm.token_forward_kl, lm.token_reverse_kl, lm.token_gjsd):
        torch.testing.assert_close(fn(s2, t2, mask), fn(s, t, mask))
        torch.testing.assert_close(fn(s, t, mask), fn(s[:, :3], t[:, :3], mask[:, :3]))   # mean over kept tokens


def test_divergences_vanish_for_equal_distributions_and_jsd_is_bounded_and_symmetric():
    s, t = _logits(0), _logits(1)
    mask = torch.ones(3, 5, dtype=torch.bool)
    for fn in (lm.token_forward_kl, lm.token_reverse_kl, lm.token_gjsd):
        assert fn(s, s + 3.0, mask).abs() < 1e-6               # a logit shift changes nothing
        assert fn(s, t, mask) > 0.01
    j = lm.token_gjsd(s, t, mask, beta=0.5)
    torch.testing.assert_close(j, lm.token_gjsd(t, s, mask, beta=0.5))
    assert j <= math.log(2)
    # small beta: JSD / beta -> KL(p || q)  (p = teacher)
    small = lm.token_gjsd(s, t, mask, beta=1e-4) / 1e-4
    torch.testing.assert_close(small, lm.token_forward_kl(s, t, mask), rtol=2e-2, atol=1e-3)


def test_token_kd_loss_excludes_minus_100_from_both_terms_and_alpha_extremes():
    s, t = _logits(0), _logits(1)
    y = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(2))
    y[1, 2:] = -100
    mask = y != -100
    ce = F.cross_entropy(s[mask], y[mask])
    torch.testing.assert_close(lm.token_kd_loss(s, t, y, alpha=1.0), ce)
    torch.testing.assert_close(lm.token_kd_loss(s, t, y, kind="rkl"), lm.token_reverse_kl(s, t, mask))
    mix = lm.token_kd_loss(s, t, y, kind="fkl", alpha=0.3, T=2.0)
    torch.testing.assert_close(mix, 0.3 * ce + 0.7 * 4.0 * lm.token_forward_kl(s, t, mask, T=2.0))
    with pytest.raises(KeyError, match="unknown divergence"):
        lm.token_kd_loss(s, t, y, kind="tvd")
    with pytest.raises(ValueError, match="no token"):
        lm.token_forward_kl(s, t, torch.zeros(3, 5, dtype=torch.bool))


def test_forward_kl_covers_modes_and_reverse_kl_seeks_one():
    """Fit one Gaussian-like unimodal q to a bimodal p: forward KL spreads, reverse KL picks a mode."""
    v = torch.arange(20.0)
    p_logits = torch.logsumexp(torch.stack([-(v - 4) ** 2 / 2, -(v - 15) ** 2 / 2]), 0).view(1, 1, 20)
    mask = torch.ones(1, 1, dtype=torch.bool)
    best = {}
    for name, fn in (("fkl", lm.token_forward_kl), ("rkl", lm.token_reverse_kl)):
        fits = [(fn((-(v - mu) ** 2 / (2 * sd ** 2)).view(1, 1, 20), p_logits, mask).item(), mu, sd)
                for mu in torch.arange(0, 20, 0.5).tolist() for sd in (0.7, 1, 2, 4, 6)]
        best[name] = min(fits)
    assert 7 <= best["fkl"][1] <= 12 and best["fkl"][2] >= 4                  # between the modes, wide
    assert best["rkl"][1] in (4.0, 15.0) and best["rkl"][2] <= 1                # on one mode, narrow


# ---- training and the cache --------------------------------------------------------------------
def test_lr_schedule_warms_up_holds_and_decays():
    f = lambda s, **kw: lm.lr_at(s, steps=100, lr=1.0, warmup=10, **kw)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(50, decay_from=1.0) == 1.0 and f(99, decay_from=1.0) == 1.0
    assert f(50, decay_from=0.6) == 1.0 and f(99, decay_from=0.6) < 0.01
    assert f(20) > f(50) > f(90)


def test_training_learns_a_copy_of_the_start_digit():
    qs = lm.make_questions(400, n_ops=2, seed=0)
    comp = [f"#{q[0]}$" for q in qs]                       # "answer" = the first digit: easy to learn
    x, y = lm.encode_examples(qs, comp, length=8)
    model = tiny_gpt(seed=0)
    hist = lm.train_lm(model, x, y, steps=150, lr=1e-2, batch_size=32, seed=0)
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    texts = lm.answer(model, qs[:50])
    assert sum(lm.final_answer(t) == int(q[0]) for q, t in zip(qs, texts)) >= 45


def test_training_is_reproducible_with_a_seed_and_kd_needs_teacher_logits():
    qs = lm.make_questions(64, n_ops=2, seed=0)
    x, y = lm.encode_examples(qs, [lm.scratchpad(q) for q in qs], length=10)
    runs = [lm.train_lm(tiny_gpt(seed=1), x, y, steps=5, seed=2)["loss"] for _ in range(2)]
    assert runs[0] == runs[1]
    with pytest.raises(ValueError, match="teacher logits"):
        lm.train_lm(tiny_gpt(), x, y, steps=1, kind="fkl")
    t = lm.teacher_logits(tiny_gpt(seed=5), x)
    hist = lm.train_lm(tiny_gpt(seed=1), x, y, steps=20, kind="rkl", t_logits=t, lr=1e-2)
    assert hist["loss"][-1] < hist["loss"][0]


def test_exact_match_scores_only_the_final_answer(monkeypatch):
    qs = ["3*7+2*9*3+4=", "1+1=", "2*3=", "9+9="]
    texts = ["0;0;0;0;#5$", "#2$", "6;#5$", "#7"]          # right (wrong steps), right, wrong, wrong
    monkeypatch.setattr(lm.train, "answer", lambda model, questions, **kw: texts)
    assert lm.exact_match(None, qs) == 50.0
    assert lm.tokens_per_answer(["#5$", "1;#2$"]) == 4.0


CFG = {"name": "test", "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 16}, "steps": 3}


def _train(model):
    qs = lm.make_questions(32, n_ops=2, seed=0)
    x, y = lm.encode_examples(qs, [lm.scratchpad(q) for q in qs], length=10)
    return {"loss": lm.train_lm(model, x, y, steps=3)["loss"]}


def test_cached_model_is_loaded_the_second_time_with_the_same_weights(tmp_path):
    m1, info1 = lm.cached_lm(CFG, _train, cache_dir=tmp_path)
    m2, info2 = lm.cached_lm(CFG, _train, cache_dir=tmp_path)
    assert not info1["loaded"] and info2["loaded"] and info2["loss"] == info1["loss"]
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    _, info3 = lm.cached_lm({**CFG, "steps": 4}, _train, cache_dir=tmp_path)   # another recipe: trained
    assert not info3["loaded"]


def test_corrupt_cached_model_is_detected_and_rebuilt(tmp_path):
    lm.cached_lm(CFG, _train, cache_dir=tmp_path)
    ckpt, meta = lm.lm_cache_paths(CFG, tmp_path)
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="checksum mismatch"):
        _, info = lm.cached_lm(CFG, _train, cache_dir=tmp_path)
    assert not info["loaded"]
    assert json.loads(meta.read_text())["sha256"] == __import__("kdcourse").utils.sha256_file(ckpt)
    with pytest.raises(KeyError, match="name"):
        lm.cached_lm({"model": {}}, _train, cache_dir=tmp_path)


SMALL_TEACHER = dict(model={"d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 32}, n_train=64, steps=2)


def test_the_cached_teacher_is_checksummed_like_the_image_teachers(tmp_path):
    t1, info1 = lm.get_lm_teacher(cache_dir=tmp_path, **SMALL_TEACHER)
    t2, info2 = lm.get_lm_teacher(cache_dir=tmp_path, **SMALL_TEACHER)
    assert not info1["loaded"] and info2["loaded"] and info2["train_seconds"] == info1["train_seconds"]
    assert not t2.training and not any(p.requires_grad for p in t2.parameters())
    ckpt, meta = lm.lm_cache_paths(json.loads(json.dumps({**lm.TEACHER_RECIPE, **SMALL_TEACHER})), tmp_path)
    assert json.loads(meta.read_text())["sha256"] == __import__("kdcourse").utils.sha256_file(ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:-10])                       # truncated file
    with pytest.warns(UserWarning, match="unusable"):
        t3, info3 = lm.get_lm_teacher(cache_dir=tmp_path, **SMALL_TEACHER)
    assert not info3["loaded"]
    assert all(torch.equal(a, b) for a, b in zip(t1.parameters(), t3.parameters()))   # same recipe, same weights
    with pytest.raises(KeyError, match="unknown teacher recipe keys"):
        lm.get_lm_teacher(cache_dir=tmp_path, epochs=3)


def test_students_are_cached_per_recipe_seed_and_data(tmp_path):
    qs = lm.make_questions(32, n_ops=2, seed=0)
    x, y = lm.encode_examples(qs, [lm.scratchpad(q) for q in qs], length=10)
    kw = dict(model={"d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 16}, steps=3, cache_dir=tmp_path,
              curve_questions=qs[:4], eval_every=2)
    m1, i1 = lm.train_student("s", x, y, seed=0, **kw)
    _, i2 = lm.train_student("s", x, y, seed=0, **kw)
    assert not i1["loaded"] and i2["loaded"] and i1["curve_steps"] == [2, 3] and len(i1["tf_curve"]) == 2
    y2 = y.clone()
    y2[0, -1] = -100                                               # one target changed: another data set
    assert not lm.train_student("s", x, y2, seed=0, **kw)[1]["loaded"]
    assert not lm.train_student("s", x, y, seed=1, **kw)[1]["loaded"]


def test_teacher_forced_accuracy_counts_answer_tokens_only():
    qs = lm.make_questions(50, n_ops=2, seed=0)
    model = tiny_gpt(seed=0).eval()
    acc = lm.teacher_forced_accuracy(model, qs)
    assert 0.0 <= acc < 50.0
    with torch.no_grad():                                          # a head that always says ";": right on 1 token in 5
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[lm.tokenizer.encode(";")[0]] = 5.0
    assert lm.teacher_forced_accuracy(model, qs) == pytest.approx(100 / 5)  # "d;#d$": 1 of 5 answer tokens


def test_a_tokenizer_needs_distinct_symbols_and_maps_them_in_order():
    tok = lm.Tokenizer("ab$")
    assert len(tok) == 3 and tok.encode("ba") == [1, 0]
    with pytest.raises(ValueError, match="distinct"):
        lm.Tokenizer("aab")


def test_masked_mean_averages_only_the_kept_entries_and_names_shape_errors():
    v = torch.tensor([[1.0, 2.0, 100.0], [3.0, -50.0, 6.0]])
    keep = torch.tensor([[True, True, False], [True, False, True]])
    assert lm.masked_mean(v, keep).item() == pytest.approx(3.0)     # (1 + 2 + 3 + 6) / 4
    with pytest.raises(ValueError, match="mask shape"):
        lm.masked_mean(v, keep[:, :2])


def test_token_divergence_dispatches_by_name():
    from kdcourse.lm.losses import DIVERGENCES
    s, t = _logits(3), _logits(4)
    mask = torch.ones(3, 5, dtype=torch.bool)
    assert set(DIVERGENCES) == {"fkl", "rkl", "jsd"}
    torch.testing.assert_close(lm.token_divergence("rkl", s, t, mask), lm.token_reverse_kl(s, t, mask))
    torch.testing.assert_close(lm.token_divergence("jsd", s, t, mask, beta=0.3), lm.token_gjsd(s, t, mask, beta=0.3))
    assert not torch.allclose(lm.token_divergence("fkl", s, t, mask), lm.token_divergence("rkl", s, t, mask))

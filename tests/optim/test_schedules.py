"""pytest tests/optim/test_schedules.py

LR schedules against closed forms at many steps (boundaries included), their validation and YAML
round trip, and agreement with megatron-core's OptimizerParamScheduler where definitions coincide.
"""

import math

import pytest

from megamid.config import ConfigError
from megamid.optim import DECAY_STYLES, LRSchedule, lr_at

PEAK, MIN, START = 3e-4, 3e-5, 1e-5
TOTAL, WARMUP, DECAY = 120, 10, 40


def closed_form(style, step, decay_style="linear", start=START, warmup=WARMUP, total=TOTAL, decay=DECAY):
    """The schedule written out once more, from the formulas in the module docstring."""
    step = min(step, total)
    if warmup and step <= warmup:
        return start + (PEAK - start) * step / warmup
    if style == "constant":
        return PEAK
    if style == "inverse-sqrt":
        return max(MIN, PEAK * math.sqrt(max(warmup, 1)) / math.sqrt(step))
    if style in ("linear", "cosine"):
        decay_style, decay = style, total - warmup
    r = max(0.0, (step - (total - decay)) / decay)
    coeff = {
        "linear": 1 - r,
        "cosine": (1 + math.cos(math.pi * r)) / 2,
        "1-sqrt": 1 - math.sqrt(r),
        "exponential": 2 * 0.5**r - 1,
    }[decay_style]
    return MIN + (PEAK - MIN) * coeff


def make(style, **kw):
    kw = {"peak_lr": PEAK, "min_lr": MIN, "start_lr": START, "warmup_steps": WARMUP, **kw}
    if style == "wsd":
        kw.setdefault("decay_steps", DECAY)
    return LRSchedule(style=style, **kw)


CASES = [(s, None) for s in ("constant", "linear", "cosine", "inverse-sqrt")] + [("wsd", d) for d in DECAY_STYLES]


@pytest.mark.parametrize("style,decay_style", CASES)
def test_matches_closed_form_everywhere(style, decay_style):
    kw = {"decay_style": decay_style} if decay_style else {}
    s = make(style, **kw)
    for step in range(0, TOTAL + 15):
        want = closed_form(style, step, decay_style or "linear")
        assert lr_at(s, step, TOTAL) == pytest.approx(want, rel=1e-12, abs=1e-18), step


@pytest.mark.parametrize("style,decay_style", CASES)
def test_boundaries(style, decay_style):
    kw = {"decay_style": decay_style} if decay_style else {}
    s = make(style, **kw)
    assert lr_at(s, 0, TOTAL) == pytest.approx(START)
    assert lr_at(s, WARMUP, TOTAL) == pytest.approx(PEAK)
    assert lr_at(s, WARMUP // 2, TOTAL) == pytest.approx((START + PEAK) / 2)
    end = lr_at(s, TOTAL, TOTAL)
    assert lr_at(s, TOTAL + 1, TOTAL) == end and lr_at(s, 10 * TOTAL, TOTAL) == end
    if style in ("linear", "cosine", "wsd"):
        assert end == pytest.approx(MIN)
        assert MIN < lr_at(s, TOTAL - 1, TOTAL) < PEAK  # the last update is not spent at min_lr
    if style == "wsd":
        assert lr_at(s, TOTAL - DECAY, TOTAL) == pytest.approx(PEAK)  # last stable step
        assert lr_at(s, TOTAL - DECAY + 1, TOTAL) < PEAK  # first decayed step
    if style == "constant":
        assert end == PEAK


@pytest.mark.parametrize("style,decay_style", CASES)
def test_monotone_after_warmup(style, decay_style):
    kw = {"decay_style": decay_style} if decay_style else {}
    s = make(style, **kw)
    lrs = [lr_at(s, t, TOTAL) for t in range(WARMUP, TOTAL + 1)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert all(MIN - 1e-15 <= lr <= PEAK for lr in lrs)


def test_no_warmup_starts_at_peak_and_decay_fraction():
    s = LRSchedule(style="wsd", peak_lr=1.0, decay_fraction=0.25)
    assert lr_at(s, 0, 100) == 1.0
    assert lr_at(s, 75, 100) == 1.0 and lr_at(s, 76, 100) == pytest.approx(1 - 1 / 25)
    assert lr_at(s, 100, 100) == 0.0
    assert s.decay_steps_for(10) == 2  # round(2.5) -> 2 (banker's); at least 1
    assert LRSchedule(style="wsd", peak_lr=1.0, decay_fraction=0.01).decay_steps_for(10) == 1


def test_start_lr_from_checkpoint():
    s = LRSchedule.from_dict({"style": "wsd", "start_lr": "from_checkpoint", "decay_steps": 50, "decay_style": "cosine"})
    assert s.needs_checkpoint_lr and s.start_lr == "from_checkpoint"
    with pytest.raises(ConfigError, match="from_checkpoint"):
        lr_at(s, 0, 100)
    r = s.resolve(2e-4)
    assert not r.needs_checkpoint_lr and r.peak == 2e-4
    assert lr_at(r, 0, 100) == 2e-4 and lr_at(r, 50, 100) == 2e-4 and lr_at(r, 100, 100) == 0.0
    # re-warm from the checkpoint's LR to a new peak
    w = LRSchedule(style="cosine", start_lr="from_checkpoint", peak_lr=1e-3, warmup_steps=4).resolve(1e-4)
    assert lr_at(w, 0, 20) == 1e-4 and lr_at(w, 2, 20) == pytest.approx(5.5e-4) and lr_at(w, 4, 20) == 1e-3
    with pytest.raises(ConfigError, match="min_lr"):
        LRSchedule(style="linear", start_lr="from_checkpoint", min_lr=1e-3).resolve(1e-4)


def test_yaml_round_trip_and_coercion():
    d = {"style": "wsd", "peak_lr": "3e-4", "min_lr": 3e-5, "warmup_steps": 10.0, "decay_steps": 100, "decay_style": "1-sqrt"}
    s = LRSchedule.from_dict(d)  # PyYAML reads 3e-4 as the string "3e-4"
    assert s.peak_lr == 3e-4 and s.warmup_steps == 10 and isinstance(s.warmup_steps, int)
    assert LRSchedule.from_dict(s.to_dict()) == s
    assert s.to_dict() == {"style": "wsd", "peak_lr": 3e-4, "start_lr": 0.0, "min_lr": 3e-5,
                           "warmup_steps": 10, "decay_steps": 100, "decay_style": "1-sqrt"}
    assert LRSchedule.from_dict({"style": "wsd", "peak_lr": 1, "decay_steps": 3}).decay_style == "linear"


@pytest.mark.parametrize("d,match", [
    ({"style": "step", "peak_lr": 1e-3}, r"lr\.style='step' is invalid: expected one of constant, linear"),
    ({"peak_lr": 1e-3}, r"lr\.style=None .*required"),
    ({"style": "cosine", "peak_lr": 1e-3, "warmup": 3}, r"lr\.warmup=3 .*unknown key; valid keys: style"),
    ({"style": "cosine"}, r"lr\.peak_lr=None"),
    ({"style": "cosine", "peak_lr": -1.0}, r"lr\.peak_lr=-1\.0 .*> 0"),
    ({"style": "cosine", "peak_lr": 1e-3, "min_lr": 1e-2}, r"lr\.min_lr=0\.01 .*<= peak_lr"),
    ({"style": "cosine", "peak_lr": 1e-3, "start_lr": "checkpoint"}, r"lr\.start_lr='checkpoint' .*from_checkpoint"),
    ({"style": "cosine", "peak_lr": 1e-3, "warmup_steps": 2.5}, r"lr\.warmup_steps=2\.5 .*integer"),
    ({"style": "cosine", "peak_lr": 1e-3, "decay_steps": 5}, r"lr\.decay_steps=5 .*only applies to style=wsd"),
    ({"style": "wsd", "peak_lr": 1e-3}, r"lr\.decay_steps=None .*exactly one of decay_steps, decay_fraction"),
    ({"style": "wsd", "peak_lr": 1e-3, "decay_steps": 5, "decay_fraction": 0.1}, r"exactly one"),
    ({"style": "wsd", "peak_lr": 1e-3, "decay_fraction": 1.5}, r"lr\.decay_fraction=1\.5 .*\(0, 1\]"),
    ({"style": "wsd", "peak_lr": 1e-3, "decay_steps": 5, "decay_style": "sqrt"}, r"lr\.decay_style='sqrt' .*linear, cosine, 1-sqrt, exponential"),
])
def test_validation_names_field_value_and_choices(d, match):
    with pytest.raises(ConfigError, match=match):
        LRSchedule.from_dict(d)


def test_budget_checked_against_total_steps():
    s = make("wsd", decay_steps=100)
    with pytest.raises(ConfigError, match=r"decay_steps=100 .*warmup_steps=10 \+ decay must be <= total_steps=50"):
        lr_at(s, 0, 50)
    with pytest.raises(ConfigError, match=r"warmup_steps=10 .*<= total_steps=5"):
        lr_at(make("cosine"), 0, 5)
    with pytest.raises(ConfigError, match="step=-1"):
        lr_at(make("cosine"), -1, 50)


# -- agreement with megatron-core ------------------------------------------------------------------


def megatron_lrs(style, total, warmup, start, decay_style=None, wsd_decay_steps=None, steps=None):
    """LR from megatron-core's scheduler after `t` calls of step(1), for t in 0..steps."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    class _Opt:  # the scheduler only writes param_groups[i]["lr"]
        param_groups = [{}]

    sched = OptimizerParamScheduler(
        _Opt(), init_lr=start, max_lr=PEAK, min_lr=MIN, lr_warmup_steps=warmup, lr_decay_steps=total,
        lr_decay_style=style, start_wd=0.0, end_wd=0.0, wd_incr_steps=total, wd_incr_style="constant",
        wsd_decay_steps=wsd_decay_steps, lr_wsd_decay_style=decay_style,
    )
    out = [_Opt.param_groups[0]["lr"]]
    for _ in range(steps or total):
        sched.step(1)
        out.append(_Opt.param_groups[0]["lr"])
    return out


MEGATRON_WSD = {"linear": "linear", "cosine": "cosine", "1-sqrt": "minus_sqrt", "exponential": "exponential"}


@pytest.mark.parametrize("decay_style", DECAY_STYLES)
@pytest.mark.parametrize("warmup", [0, 1, WARMUP])
def test_wsd_agrees_with_megatron(decay_style, warmup):
    ours = make("wsd", decay_style=decay_style, warmup_steps=warmup)
    theirs = megatron_lrs("WSD", TOTAL, warmup, START, MEGATRON_WSD[decay_style], DECAY)
    assert [lr_at(ours, t, TOTAL) for t in range(TOTAL + 1)] == pytest.approx(theirs, rel=1e-12, abs=1e-18)


@pytest.mark.parametrize("style", ["constant", "linear", "cosine", "inverse-sqrt"])
def test_other_styles_agree_with_megatron_up_to_total_steps(style):
    mstyle = "inverse-square-root" if style == "inverse-sqrt" else style
    theirs = megatron_lrs(mstyle, TOTAL, WARMUP, START, steps=TOTAL + 5)
    ours = [lr_at(make(style), t, TOTAL) for t in range(TOTAL + 6)]
    assert ours[: TOTAL + 1] == pytest.approx(theirs[: TOTAL + 1], rel=1e-12, abs=1e-18)
    if style == "inverse-sqrt":  # documented difference: megatron drops to min_lr past lr_decay_steps
        assert theirs[TOTAL + 1] == MIN and ours[TOTAL + 1] == ours[TOTAL] > MIN
    else:
        assert ours[TOTAL + 1 :] == pytest.approx(theirs[TOTAL + 1 :], rel=1e-12)


@pytest.mark.parametrize("key, value, message", [
    ("peak_lr", float("nan"), "lr.peak_lr=nan is invalid: expected a finite number > 0"),
    ("peak_lr", float("inf"), "lr.peak_lr=inf is invalid: expected a finite number > 0"),
    ("peak_lr", "nan", "lr.peak_lr=nan is invalid"),           # YAML 1.1 leaves 3e-4 as a string: parsed as float
    ("min_lr", float("nan"), "lr.min_lr=nan is invalid: expected a finite number >= 0"),
    ("start_lr", -float("inf"), "lr.start_lr=-inf is invalid"),
    ("decay_fraction", float("nan"), "lr.decay_fraction=nan is invalid"),
])
def test_non_finite_lr_values_are_refused(key, value, message):
    d = {"style": "wsd", "peak_lr": 1e-3, "decay_fraction": 0.5, key: value}
    with pytest.raises(ConfigError) as exc:
        LRSchedule.from_dict(d, "lr")
    assert message in str(exc.value)


def test_resolve_refuses_an_infinite_checkpoint_lr_and_keeps_nan_as_unknown():
    s = LRSchedule.from_dict({"style": "linear", "start_lr": "from_checkpoint", "min_lr": 0.0})
    with pytest.raises(ConfigError, match="start_lr=inf is invalid"):
        s.resolve(float("inf"))
    assert math.isnan(s.resolve(float("nan")).start_lr)      # what `megamid plan` prints as "ckpt"
    assert s.resolve(2e-4).start_lr == 2e-4

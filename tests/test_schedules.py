import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from duo.schedules import SCHEDULES, antithetic_times, get_schedule, sigma_from_alpha


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_endpoints_and_monotone(name):
    s = get_schedule(name, eps=1e-3)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    a = s.alpha(t)
    assert a[0] == pytest.approx(1.0, abs=1e-12)
    # alpha_1 > 0 so sigma = -log alpha stays finite: eps for log-linear, 1 - cos(pi eps / 2) for cosine
    expected_end = 1e-3 if name == "loglinear" else 1 - math.cos(math.pi / 2 * 1e-3)
    assert float(a[-1]) == pytest.approx(expected_end, rel=1e-9)
    assert bool((a[1:] < a[:-1]).all())


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@settings(max_examples=50, deadline=None)
@given(t=st.floats(0.01, 0.99))
def test_derivative_and_inverse(name, t):
    s = get_schedule(name)
    tt = torch.tensor([t], dtype=torch.float64)
    h = 1e-6
    fd = (s.alpha(tt + h) - s.alpha(tt - h)) / (2 * h)
    assert float(s.dalpha(tt)) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)
    assert float(s.t_from_alpha(s.alpha(tt))) == pytest.approx(t, abs=1e-9)


def test_unknown_schedule_lists_valid():
    with pytest.raises(ValueError, match="cosine.*loglinear"):
        get_schedule("linear")
    with pytest.raises(ValueError, match="eps"):
        get_schedule("loglinear", eps=1.5)


def test_antithetic_times_are_stratified():
    t = antithetic_times(8, eps=1e-3, generator=torch.Generator().manual_seed(0))
    assert t.shape == (8,) and bool((t >= 1e-3).all()) and bool((t <= 1).all())
    u = (t - 1e-3) / (1 - 1e-3)
    # one draw per stratum of width 1/8
    assert sorted((u * 8).floor().long().tolist()) == list(range(8))


def test_antithetic_times_shard_the_global_batch():
    u = torch.tensor(0.37, dtype=torch.float64)
    full = antithetic_times(8, u=u)
    parts = [antithetic_times(4, u=u, offset=4 * r, total=8) for r in range(2)]
    assert torch.allclose(torch.cat(parts), full)


def test_sigma_from_alpha():
    assert float(sigma_from_alpha(torch.tensor(math.exp(-2.0)))) == pytest.approx(2.0)


def test_antithetic_times_stay_on_the_device_of_u():
    # A u drawn on an accelerator is not copied to the host (a sync per call); the meta
    # device stands in for one: any copy to the host would raise.
    t = antithetic_times(4, u=torch.tensor(0.3, dtype=torch.float64, device="meta"))
    assert t.device.type == "meta" and t.shape == (4,)

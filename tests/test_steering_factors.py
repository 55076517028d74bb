"""Per-head steering factors: formulas, parameter conventions, validation."""
import pytest
import torch

from hrv.format.hrv_file import load
from hrv.steering.factors import SteeringError, adjust, ordered_weakening, strengthen


@pytest.fixture(scope="module")
def sd1(official_dir):
    return load(f"{official_dir}/sd1_official.safetensors")


@pytest.fixture(scope="module")
def sdxl(official_dir):
    return load(f"{official_dir}/sdxl_official.safetensors")


def test_strengthen_is_paper_rescale_at_one_and_identity_at_zero(sd1):
    row = sd1.row("Color")
    assert torch.equal(strengthen(row, 1.0), row)
    assert torch.equal(strengthen(row, 0.0), torch.ones(128))
    s = strengthen(row, 0.5)
    assert s.dtype == torch.float32 and s.shape == (128,)
    assert torch.allclose(s, (row + 1) / 2)
    # Mean 1 rows keep mean 1 whatever the strength: the overall token weight is redistributed, not inflated.
    assert strengthen(row, 3.0).mean().item() == pytest.approx(1.0, abs=1e-5)


def test_adjust_paper_convention(sd1):
    d, u = sd1.row("Color"), sd1.row("Material")
    s = adjust(d, u)
    assert torch.allclose(s, d - u + 1)
    assert s.mean().item() == pytest.approx(1.0, abs=1e-5)
    # The inputs are left alone.
    assert torch.equal(d, sd1.row("Color"))


def test_adjust_authors_sdxl_convention_clamps_before_weighting(sdxl):
    d, u = sdxl.row("Animals"), sdxl.row("Color")
    assert d.max() > 9 or u.max() > 9, "the test needs SDXL rows that reach the clamp"
    s = adjust(d, u, w_desired=2, w_undesired=1, offset=0, clamp=9)
    assert torch.allclose(s, 2 * d.clamp(max=9) - u.clamp(max=9))
    assert s.max() <= 18 and s.min() >= -9
    assert not torch.allclose(s, 2 * d - u)


def test_adjust_hand_values():
    d = torch.tensor([0.0, 2.0, 12.0])
    u = torch.tensor([1.0, 1.0, 20.0])
    assert adjust(d, u, 2, 1, 0, clamp=9).tolist() == [-1.0, 3.0, 9.0]
    assert adjust(d, u).tolist() == [0.0, 2.0, -7.0]


@pytest.mark.parametrize("most_first, expected_heads", [(True, [1, 2]), (False, [3, 4])])
def test_ordered_weakening_picks_heads_with_stable_ties(most_first, expected_heads):
    row = torch.tensor([1.0, 3.0, 3.0, 0.0, 0.0, 3.0])
    s = ordered_weakening(row, 2, most_relevant_first=most_first, factor=-2)
    expected = torch.ones(6)
    expected[expected_heads] = -2
    assert torch.equal(s, expected)


def test_ordered_weakening_on_official_row(sd1):
    row = sd1.row("Material")
    s = ordered_weakening(row, 10, True)
    chosen = (s == -2).nonzero().flatten()
    assert len(chosen) == 10 and (s[s != -2] == 1).all()
    assert row[chosen].min() >= row[s == 1].max()
    s = ordered_weakening(row, 10, False, factor=0.0)
    assert row[s == 0].max() <= row[s == 1].min()
    assert torch.equal(ordered_weakening(row, 0, True), torch.ones(128))
    assert (ordered_weakening(row, 128, True, factor=0.5) == 0.5).all()


@pytest.mark.parametrize("call, message", [
    (lambda r: strengthen(r.clone().index_fill_(0, torch.tensor([3]), float("nan"))), "NaN"),
    (lambda r: strengthen(r, float("inf")), "strength must be a finite"),
    (lambda r: strengthen(r, "lots"), "strength must be a number"),
    (lambda r: strengthen(r.view(2, 64)), "one HRV row"),
    (lambda r: strengthen(r.long()), "floating-point"),
    (lambda r: strengthen(r.tolist()), "torch tensor"),
    (lambda r: adjust(r, r[:64]), "same HRV"),
    (lambda r: adjust(r, r, clamp=0), "clamp must be positive"),
    (lambda r: adjust(r, r.clone().fill_(float("inf"))), "undesired"),
    (lambda r: adjust(r, r, offset=float("nan")), "offset"),
    (lambda r: ordered_weakening(r, 129, True), "between 0 and 128"),
    (lambda r: ordered_weakening(r, -1, True), "between 0 and 128"),
    (lambda r: ordered_weakening(r, 2.5, True), "whole number"),
    (lambda r: ordered_weakening(r, 3, True, factor=float("nan")), "factor"),
])
def test_bad_input_is_a_clear_error(sd1, call, message):
    with pytest.raises(SteeringError, match=message):
        call(sd1.row("Color"))

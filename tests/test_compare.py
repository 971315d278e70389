"""The tolerance rule and the checks around it (poison, NaN, degenerate outputs)."""

import torch

from workbench import compare

TOL = {"factor": 2.0, "atol": 1e-4}


def lowp(t):
    return t.to(torch.bfloat16).float()


def test_poison_is_counted_as_unwritten_not_as_nan():
    out = torch.randn(64, 64).to(torch.bfloat16)
    ref = out.float()
    compare.poison(out[:8])
    m = compare.metrics(out, ref, lowp(ref), TOL)
    assert m["unwritten"] == 8 * 64 and m["nan"] == 0 and m["verdict"] == "FAIL"
    computed_nan = out.clone().fill_(1.0)
    computed_nan[0, 0] = float("nan")
    m2 = compare.metrics(computed_nan, torch.ones(64, 64), torch.ones(64, 64), TOL)
    assert m2["nan"] == 1 and m2["unwritten"] == 0


def test_an_output_left_unpoisoned_has_no_unwritten_elements_even_if_its_bytes_match_the_poison():
    """Under initcheck the worker skips the poison fill: a reused allocation may still hold
    an earlier run's poison bytes, which must not be reported as this run's unwritten."""
    out = torch.randn(64, 64).to(torch.bfloat16)
    ref = out.float()
    compare.poison(out[:8])  # leftovers of an earlier allocation
    m = compare.metrics(out, ref, lowp(ref), TOL, poisoned=False)
    assert m["unwritten"] == 0 and m["nan"] == 8 * 64 and m["verdict"] == "FAIL"


def test_poison_patterns_for_every_float_dtype():
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        t = torch.zeros(10, dtype=dtype)
        compare.poison(t)
        assert torch.isnan(t).all() and compare.unwritten_mask(t).all()
        assert not compare.unwritten_mask(torch.full((3,), float("nan"), dtype=dtype)).any()


def test_tolerance_is_twice_torchs_own_error_plus_atol():
    torch.manual_seed(0)
    ref = torch.randn(128, 128)
    ref_lp = lowp(ref)
    torch_err = float((ref_lp - ref).abs().max())
    near = ref + 1.9 * torch_err  # inside 2x
    far = ref + 2.1 * torch_err + 2e-4
    assert compare.metrics(near, ref, ref_lp, TOL)["verdict"] == "PASS"
    bad = compare.metrics(far, ref, ref_lp, TOL)
    assert bad["verdict"] == "FAIL" and "max error" in bad["reasons"][0]
    assert abs(bad["tolerance"] - (2 * torch_err + 1e-4)) < 1e-9


def test_all_zero_and_constant_outputs_never_pass_on_varied_references():
    ref = torch.randn(64, 64) * 1e-6  # tiny values: max error alone would pass a zero output
    zero = torch.zeros(64, 64)
    m = compare.metrics(zero, ref, ref, {"factor": 2.0, "atol": 1e-4})
    assert m["verdict"] == "FAIL" and "output is all zero" in m["reasons"]
    const = torch.full((64, 64), 0.5)
    ref2 = 0.5 + torch.randn(64, 64) * 0.1
    assert "constant" in " ".join(compare.metrics(const, ref2, ref2, TOL)["reasons"])


def test_a_constant_output_passes_when_the_reference_is_that_constant_within_tolerance():
    # ones-v at n = 8192 on an H200: the fp32 reference is 1 +- 6e-6, the kernel writes exactly 1.
    ref = torch.ones(256, 64) + (torch.rand(256, 64) - 0.5) * 1.2e-5
    out = torch.ones(256, 64, dtype=torch.bfloat16)
    assert compare.metrics(out, ref, ref, TOL)["verdict"] == "PASS"
    varied = torch.ones(256, 64) + (torch.rand(256, 64) - 0.5) * 1e-2
    assert "output is constant (1)" in compare.metrics(out, varied, varied, TOL)["reasons"]


def test_max_error_location_and_cosine():
    ref = torch.zeros(4, 5)
    ref[2, 3] = 1.0
    out = ref.clone()
    out[1, 4] = 0.5
    m = compare.metrics(out, ref, ref, TOL)
    assert m["max_err_at"] == [1, 4] and m["out_at_max"] == 0.5 and m["ref_at_max"] == 0.0
    assert 0.8 < m["cos"] < 0.9


def test_rtol_lets_each_element_differ_by_a_fraction_of_its_own_reference():
    """An fp32 output with no calibration error (an LSE near 60) may differ by rtol * |ref| per
    element on top of atol; an element near 0 gets no share of a large neighbour's slack."""
    ref = torch.zeros(4, 64)
    ref[:, :32] = 60.0  # the LSE-sized half
    tol = {**TOL, "rtol": 2.0**-20}  # at 60: 5.7e-5 more
    near_big = ref.clone()
    near_big[1, 3] += 1.5e-4  # under 1e-4 + 5.7e-5
    assert compare.metrics(near_big, ref, ref.clone(), TOL)["verdict"] == "FAIL"  # without rtol it is over
    assert compare.metrics(near_big, ref, ref.clone(), tol)["verdict"] == "PASS"
    over_big = ref.clone()
    over_big[1, 3] += 1.7e-4  # 60.000172 in fp32
    bad = compare.metrics(over_big, ref, ref.clone(), tol)
    assert bad["verdict"] == "FAIL" and bad["reasons"] == ["error 0.000172 at a reference of 60 > tolerance 0.0001 + 9.54e-07·|ref|"]
    near_zero = ref.clone()
    near_zero[2, 40] += 1.5e-4  # the same error where the reference is 0: atol alone
    bad = compare.metrics(near_zero, ref, ref.clone(), tol)
    assert bad["verdict"] == "FAIL" and "at a reference of 0 " in bad["reasons"][0]
    assert bad["rtol"] == 2.0**-20 and compare.metrics(near_zero, ref, ref.clone(), TOL)["rtol"] == 0.0


def test_a_reference_that_is_not_finite_where_the_output_is_never_passes():
    """Elements with a NaN or an infinity in the reference were left out of every check: an
    all-NaN reference passed any output (and a run with a broken reference() read PASS)."""
    out = torch.full((4, 4), 2.0).to(torch.bfloat16)
    nan_ref = torch.full((4, 4), float("nan"))
    m = compare.metrics(out, nan_ref, nan_ref, TOL)
    assert m["verdict"] == "FAIL" and m["reasons"] == ["16 NaN in the reference itself (a broken reference, or inputs it cannot take)"]
    ref = out.float().clone()
    ref[1, 2] = float("inf")
    ref[3, 0] = float("-inf")
    m = compare.metrics(out, ref, lowp(ref), TOL)
    assert m["verdict"] == "FAIL" and m["reasons"] == ["2 element(s) where the reference is ±Inf and the output is not that Inf"]
    # the same infinity is a match: LSE = -inf of a row that sees no key
    matched = out.clone()
    matched[1, 2], matched[3, 0] = float("inf"), float("-inf")
    assert compare.metrics(matched, ref, lowp(ref), TOL)["verdict"] == "PASS"

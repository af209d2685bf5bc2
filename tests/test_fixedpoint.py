"""F8Net arithmetic rules (pure Python)."""

from fractions import Fraction

import numpy as np

from f8tvm.core.fixedpoint import fix_quant, qrange, rq_reference, std_fraclen


def _round_half_even(fr: Fraction) -> int:
    fl = fr.numerator // fr.denominator
    rem = fr - fl
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and fl % 2):
        return fl + 1
    return fl


def test_rq_matches_exact_rational_rounding():
    rng = np.random.default_rng(1)
    acc = rng.integers(-(2**20), 2**20, 4000)
    acc[:40] = np.arange(-20, 20) * 8 + 4  # exact ties for shift 3
    for shift in (-2, 0, 1, 3, 7):
        got = rq_reference(acc, shift, signed=True)
        lo, hi = qrange(True)
        want = [min(max(_round_half_even(Fraction(int(a), 2**shift) if shift >= 0
                                         else Fraction(int(a) * 2**-shift)), lo), hi)
                for a in acc]
        assert got.tolist() == want


def test_ties_go_to_even_not_up():
    assert rq_reference(np.array([1, 3, 5, -1, -3]), 1, True).tolist() == [0, 2, 2, 0, -2]
    assert fix_quant(np.array([0.5, 1.5, 2.5]), 0, False).tolist() == [0, 2, 2]


def test_signed_range_is_symmetric_and_unsigned_clamps_negative():
    assert qrange(True) == (-127, 127)
    assert fix_quant(np.array([-5.0, 300.0]), 0, True).tolist() == [-5, 127]
    assert fix_quant(np.array([-5.0, 300.0]), 0, False).tolist() == [0, 255]
    assert fix_quant(np.array([-200.0]), 0, True).tolist() == [-127]


def test_std_rule_constants():
    # FL is the largest n with std <= C / 2**n, C = 40 signed / 70 unsigned
    assert int(std_fraclen(40 / 2**5, True, 0, 7)) == 5
    assert int(std_fraclen(40 / 2**5 * 1.01, True, 0, 7)) == 4
    assert int(std_fraclen(70 / 2**6, False, 0, 8)) == 6
    assert int(std_fraclen(1e-9, False, 0, 8)) == 8  # clamped

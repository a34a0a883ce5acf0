from lowcomm.data.split import HELD_OUT_FRACTION, held_out_mask


def test_held_out_mask_is_fixed_and_depends_only_on_the_index():
    assert (held_out_mask(1000) == held_out_mask(1000)).all()
    assert (held_out_mask(100_000)[:1000] == held_out_mask(1000)).all()


def test_held_out_fraction_is_about_four_percent():
    assert HELD_OUT_FRACTION == 0.04
    assert abs(held_out_mask(100_000).mean() - 0.04) < 0.002

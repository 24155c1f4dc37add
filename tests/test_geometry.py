"""Token geometry: Wan latent -> token grid, video sizes -> latent sizes, validation."""

import pytest
from comfyui_sparseflow.sparseflow.geometry import Geometry, geometry_from_latent, latent_shape_for_video, token_grid


def test_wan21_480p_81_frames_has_32760_tokens():
    lat = latent_shape_for_video(832, 480, 81, "wan2.1")
    assert lat == (21, 60, 104)
    g = geometry_from_latent((1, 16) + lat)
    assert (g.frames, g.height, g.width, g.tokens_per_frame, g.length) == (21, 30, 52, 1560, 32760)


def test_wan14b_720p_and_wan22_5b_token_counts_match_anchors():
    assert geometry_from_latent(latent_shape_for_video(1280, 720, 81, "wan2.1")).length == 75600
    assert geometry_from_latent(latent_shape_for_video(1280, 704, 121, "wan2.2-5b")).length == 27280


def test_odd_latent_sizes_round_up_like_comfy_pad_to_patch():
    # ComfyUI probe (COMFY_NOTES 2.3): 3x9x7 -> (3,5,4); +2 time_dim_concat frames -> (5,4,4) for 3x8x8.
    assert token_grid((3, 9, 7)) == (3, 5, 4)
    assert token_grid((3, 8, 8), extra_frames=2) == (5, 4, 4)


def test_extra_tokens_count_in_length_and_length_mismatch_is_named():
    g = Geometry(3, 4, 4, prefix=16, suffix=5)
    assert g.length == 16 + 48 + 5
    with pytest.raises(ValueError, match="needs prefix \\+ frames\\*height\\*width \\+ suffix = 69"):
        g.check_length(70)


@pytest.mark.parametrize("kwargs,field", [({"frames": 0}, "frames"), ({"height": -1}, "height"),
                                          ({"prefix": -2}, "prefix")])
def test_bad_geometry_names_the_field(kwargs, field):
    args = {"frames": 2, "height": 2, "width": 2, **kwargs}
    with pytest.raises(ValueError, match=field):
        Geometry(**args)


def test_unknown_family_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="wan2.1"):
        latent_shape_for_video(832, 480, 81, "sdxl")

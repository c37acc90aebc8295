"""tfversky.modalities: channels are names; known ones canonical, repeated ones by position."""

import pytest

from tfversky import modalities as mods


@pytest.mark.parametrize("name, expected", [
    ("T1w", "T1"), ("mprage", "T1"), ("GADO", "T1GD"), ("t2-flair", "FLAIR"),
    ("DIR", "DIR"), ("zscore", "zscore"), (" FLAIR@1 ", "FLAIR@1"), ("T1w@02", "T1@2"),
])
def test_canonical_keeps_unknown_names_as_written(name, expected):
    assert mods.canonical(name) == expected


@pytest.mark.parametrize("name", ["", "FLAIR@", "FLAIR@x", "@1", "T1,T2"])
def test_malformed_names_are_refused(name):
    with pytest.raises(ValueError, match="Invalid channel name"):
        mods.canonical(name)


def test_repeated_names_get_their_position():
    assert mods.channel_names(["FLAIR", "T1", "flair", "DIR", "FLAIR"]) == (
        "FLAIR@0", "T1", "FLAIR@1", "DIR", "FLAIR@2")
    with pytest.raises(ValueError, match="named more than once.*FLAIR@0,FLAIR@1"):
        mods.canonical_list("FLAIR,t2-flair")


def test_resolve_by_name_and_position():
    channels = ("FLAIR@0", "FLAIR@1", "T1", "DIR")
    assert mods.resolve(("DIR", "FLAIR@1", "T1@0"), channels, "x") == ("DIR", "FLAIR@1", "T1")
    with pytest.raises(ValueError, match="x has 2 channels named FLAIR.*--modalities "
                                         "FLAIR@0,FLAIR@1"):
        mods.resolve(("FLAIR",), channels, "x")
    with pytest.raises(ValueError, match="x has no T2; it holds FLAIR@0, FLAIR@1, T1, DIR"):
        mods.resolve(("T2",), channels, "x")


def test_plan_and_predict_keep_repeated_channels_in_order():
    from tfversky import inference, plan

    named = plan.Plan(modalities=("FLAIR@1", "FLAIR@0", "DIR"))
    assert plan.Plan.from_dict(named.to_dict()).modalities == ("FLAIR@1", "FLAIR@0", "DIR")
    given = {"flair@0": "base.nii", "DIR": "dir.nii", "FLAIR@1": "follow.nii"}
    assert list(inference.match_modalities(given, named).items()) == [
        ("FLAIR@1", "follow.nii"), ("FLAIR@0", "base.nii"), ("DIR", "dir.nii")]

"""`cascade.pipeline.sweep`: the per-stage sampling settings that `cascade sample`, `cascade
sr-check` and the demo's sweep read and name, in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade.cli.sample import parse_sweeps
from cascade.pipeline.sweep import (
    SETTING_TYPES,
    SweepAxis,
    SweepPoint,
    folder_value,
    read_interval,
    stage_name,
    sweep_points,
)
from cascade.stages.config import SamplingSettings, StageConfigError


def test_every_setting_read_from_text_is_a_sampling_settings_field():
    fields = set(SamplingSettings().to_dict())
    assert set(SETTING_TYPES) <= fields
    assert read_interval("-2:3.5") == (-2.0, 3.5) and read_interval("OFF") is None
    assert SETTING_TYPES["dynamic_threshold"]("none") is None and SETTING_TYPES["steps"]("7") == 7
    with pytest.raises(ValueError, match="expected LO:HI"):
        read_interval("wide")


def test_sweep_folder_names_are_those_existing_runs_were_written_with():
    """`cascade sample --sweep` spells values with Python's str (3.0, None); the demo's sweep with
    short numbers (3, off). Both spell an interval lo:hi and a guide's path without '/', ',' or '='."""
    axes = (SweepAxis("guidance", (1.0, 3.0), stage=0), SweepAxis("guidance_interval", (None, (-2.13, 2.55)), stage=0),
            SweepAxis("guide", ("runs/small,v=2/export/",), stage=1), SweepAxis("steps", (25,)))
    root = Path("out")
    cli = [point.folder for point in sweep_points(axes, root)]
    demo = [point.folder for point in sweep_points(axes, root, short=True)]
    assert cli[:2] == [root / "base.guidance=1.0,base.guidance_interval=None,sr1.guide=runs_small_v_2_export,steps=25",
                       root / "base.guidance=1.0,base.guidance_interval=-2.13:2.55,sr1.guide=runs_small_v_2_export,steps=25"]
    assert demo[:2] == [root / "base.guidance=1,base.guidance_interval=off,sr1.guide=runs_small_v_2_export,steps=25",
                        root / "base.guidance=1,base.guidance_interval=-2.13:2.55,sr1.guide=runs_small_v_2_export,steps=25"]
    assert len(cli) == len(demo) == 4 and all(len(folder.parts) == 2 for folder in cli + demo)
    assert folder_value((-2.0, 3.0)) == "-2.0:3.0" and folder_value(0.1, short=True) == "0.1"
    assert sweep_points((), root) == [SweepPoint({}, root)]  # no sweep: the folder itself


def test_cascade_sample_parses_its_sweeps_into_the_demos_axis_type():
    axes = parse_sweeps(["base.guidance=1,3", "aug_level=0,0.1", "1.guidance_interval=off,-2:3"], 2)
    assert axes == [SweepAxis("guidance", (1.0, 3.0), 0), SweepAxis("aug_level", (0.0, 0.1)),
                    SweepAxis("guidance_interval", (None, (-2.0, 3.0)), 1)]
    assert [axis.name for axis in axes] == ["base.guidance", "aug_level", "sr1.guidance_interval"]
    assert [stage_name(index) for index in range(3)] == ["base", "sr1", "sr2"]


def test_a_bad_axis_value_raises_naming_the_sampling_key():
    with pytest.raises(StageConfigError, match="sampling.aug_level"):
        SweepAxis("aug_level", (0.0, 1.5))
    with pytest.raises(ValueError, match="sweep base.guidance: give at least one value"):
        SweepAxis("guidance", (), stage=0)

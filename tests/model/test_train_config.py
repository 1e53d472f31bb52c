"""`TrainConfig`: a recipe that cannot run fails when it is made, not at the end of a job."""

import pytest

from model.config import ConfigError
from model.train_config import TrainConfig


def test_scales_are_checked_and_kept_as_a_tuple_of_floats() -> None:
    assert TrainConfig(scales=[1, 0.707]).scales == (1.0, 0.707)
    for bad in ((), (1.0, 8.0), (0.1,)):
        with pytest.raises(ConfigError, match=r"scales must be 1 to n factors in \[0.25, 4\]"):
            TrainConfig(scales=bad)

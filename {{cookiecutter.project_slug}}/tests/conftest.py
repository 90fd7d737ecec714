from pathlib import Path

import pytest

from make_sample_data import make_sample_data


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """256 samples of shape 1x8x8 in 4 classes, in the article's layout; returns their directory."""
    data_dir = tmp_path / "data"
    make_sample_data(
        data_dir, num_samples=256, shape=(1, 8, 8), num_classes=4, validation_fraction=0.25
    )
    return data_dir

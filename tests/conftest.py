"""Shared fixtures: tiny generated audio and the batches made from it (session-scoped: treat as read-only;
copy them with shutil.copytree before changing anything)."""
from __future__ import annotations

import pytest

from tests.audio_fixtures import make_tone_dataset

# normalize: pixel (cuda-convnet's per-value statistics), which the tests of the statistics check value by value
TINY_FEATURES = dict(sample_rate=8000, duration=0.5, n_fft=256, hop=128, n_mels=16, normalize="pixel")


@pytest.fixture(scope="session")
def tiny_audio_dir(tmp_path_factory):
    """Folder per class: low/ and high/, 8 clips each of 0.5 s at 8 kHz (clearly different tones in noise)."""
    root = tmp_path_factory.mktemp("tiny_audio")
    make_tone_dataset(root, classes=("low", "high"), per_class=8, sr=8000, seconds=0.5, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_batches(tiny_audio_dir, tmp_path_factory):
    """make_batches on tiny_audio_dir: logmel 16 x 30, batches of 8, test fraction 0.34 -> batch 1 train, 2 test."""
    from convnet_cli.ingest.features import FeatureSpec
    from convnet_cli.ingest.make_batches import make_batches

    out = tmp_path_factory.mktemp("tiny_batches") / "batches"
    make_batches(tiny_audio_dir, out, features=FeatureSpec.from_dict(TINY_FEATURES, "tiny"), batch_size=8,
                 test_fraction=0.34, seed=0, jobs=1, progress=False)
    return out

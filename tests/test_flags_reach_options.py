"""A flag of detect or make-batches is its click option and a field of the pipeline's options object
(commands/audio_flags.py options_of hands it over by name): every flag must name a field, a features key, or
one of the few the command itself consumes; a flag that reaches nothing would be silently ignored."""
from __future__ import annotations

import dataclasses

from convnet_cli.commands import detect as detect_cmd
from convnet_cli.commands import make_batches as mb_cmd
from convnet_cli.commands.audio_flags import options_of
from convnet_cli.detect.detect import DetectOptions
from convnet_cli.ingest.make_batches import ClipOptions
from convnet_cli.ingest.recordings import AnnotationOptions


def _params(command) -> set:
    return {p.name for p in command.params}


def _fields(*classes) -> set:
    return {f.name for c in classes for f in dataclasses.fields(c)}


def test_every_detect_flag_is_a_detect_option_or_the_commands_own():
    own = {"checkpoint", "recordings", "out_dir", "from_scores", "quiet"}
    left = _params(detect_cmd.command) - own - _fields(DetectOptions)
    assert not left, f"detect flags that reach no DetectOptions field: {sorted(left)}"
    assert "window_hop" in _params(detect_cmd.command)      # --window-hop (alias --hop) is the field's name


def test_every_make_batches_flag_reaches_an_options_field():
    own = {"audio_dir", "batch_dir", "features_file", "quiet", "annotations",
           "noise_dir", "noise_snr", "copies", "gain"}         # the last four make the NoiseOptions
    left = _params(mb_cmd.command) - own - set(mb_cmd.FEATURE_FLAGS) - _fields(ClipOptions, AnnotationOptions)
    assert not left, f"make-batches flags that reach nothing: {sorted(left)}"


def test_options_of_takes_fields_by_name_and_values_over_them():
    o = options_of(DetectOptions, {"window_hop": 0.5, "batch": 7, "quiet": True, "checkpoint": "x"}, batch=9)
    assert o.window_hop == 0.5 and o.batch == 9 and o.device == "cpu"

"""lab/bench/trace_decode.py's timeline parsing, on a hand-made kernel trace (python -m pytest lab/bench)."""
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("trace_decode", Path(__file__).with_name("trace_decode.py"))
td = importlib.util.module_from_spec(spec)
spec.loader.exec_module(td)


def _ev(name, ts, dur):
    return {"name": name, "ts": ts, "dur": dur}


def test_timeline_cuts_calls_and_measures_gaps_and_overlap():
    # call 1: serial with gaps; call 2: the attend starts 2 us before the resolve ends (overlap);
    # a stray kernel and an incomplete call (sample, score only) in between are ignored
    events = [
        _ev("_sample_kernel", 100, 5), _ev("_score_kernel", 107, 40), _ev("_resolve_kernel", 150, 10),
        _ev("_attend_kernel", 161, 20), _ev("_combine_kernel", 183, 3),
        _ev("elementwise_kernel", 190, 1),
        _ev("_sample_kernel", 200, 5), _ev("_score_kernel", 206, 40),
        _ev("_sample_kernel", 300, 6), _ev("_score_kernel", 306, 40), _ev("_resolve_kernel", 346, 12),
        _ev("_attend_kernel", 356, 20), _ev("_combine_kernel", 376, 4),
    ]
    calls = td.timeline(list(reversed(events)))  # start order is restored
    assert len(calls) == 2
    assert calls[0]["sample"] == (0.0, 5.0, None)
    assert calls[0]["score"] == (7.0, 40.0, 2.0)
    assert calls[0]["attend"] == (61.0, 20.0, 1.0)
    assert calls[1]["attend"] == (56.0, 20.0, -2.0)
    med = td.summary(calls)
    assert med["attend"]["gap_us"] == -0.5 and med["sample"]["gap_us"] is None
    assert med["span_us"] == (86.0 + 80.0) / 2


def test_main_without_gpu_says_so(capsys):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the script traces it instead")
    assert td.main(["--n", "64", "--b", "1"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_bad_variant_arguments_are_refused(capsys):
    import pytest

    for argv, says in ((["--ws", "chunk=big"], "--ws wants NAME=INT"),
                       (["--const", "_NO_SUCH_CONSTANT=1"], "has no constant _NO_SUCH_CONSTANT")):
        with pytest.raises(SystemExit) as exc:
            td.main(argv)
        assert exc.value.code == 2
        assert says in capsys.readouterr().err

"""Typed run events: one schema, metrics.jsonl as the first sink, and resumed runs that re-emit what they restored."""

import json
import math

import pytest

from causalprune import events as ev
from causalprune.experiment import load_splits, run_experiment
from causalprune.runfolder import MetricsFile, RunFolder


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _untimed(rows):
    """The events without wall-clock readings: the time stamp and durations (``solve_s``)."""
    return [{k: v for k, v in r.items() if k != "time" and not k.endswith("_s")} for r in rows]


EXAMPLES = [
    ev.EpochEvent(stage="pre", level=None, step=14, epoch=1, metrics={"train_loss": 0.5, "lr": 0.1}, time=1.0),
    ev.RoundEvent(stage="level_2", level=2, step=42, target=0.8, target_kind="macs", sparsity=0.75,
                  facts={"T": 3, "solver": "cd", "converged": True}, time=2.0),
    ev.StageEvent(stage="pre", level=None, step=14, epochs=1, source="shared", time=3.0),
    ev.SummaryEvent(stage="post", level=None, step=56, summary={"method": "causal", "sparsity_actual": 0.8}, time=4.0),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_every_kind_is_one_flat_object_with_the_common_fields_and_reads_back(event):
    obj = event.to_json()
    assert list(obj)[:5] == ["time", "event", "stage", "level", "step"]
    assert all(not isinstance(v, dict) for v in obj.values())  # flat: one JSON object per line, no nesting
    assert ev.from_json(json.loads(json.dumps(obj))) == event


def test_a_field_that_would_overwrite_the_schema_is_refused():
    with pytest.raises(ValueError, match="step"):
        ev.EpochEvent(stage="pre", level=None, step=1, epoch=1, metrics={"step": 3}).to_json()
    with pytest.raises(ValueError, match="sparsity"):
        ev.RoundEvent(stage="level_1", level=1, step=1, target=0.5, target_kind="sparsity", sparsity=0.5,
                      facts={"sparsity": 0.1}).to_json()  # fmt: skip
    with pytest.raises(ValueError, match="unknown event kind 'level_done'"):
        ev.from_json({"event": "level_done"})


def test_stage_level():
    assert [ev.stage_level(s) for s in ("pre", "level_1", "level_12", "post", "causal")] == [None, 1, 12, None, None]


def _write(path, rows, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def test_read_events_leaves_out_a_line_cut_short_and_gives_none_for_an_older_schema(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert ev.read_events(path) == []
    _write(path, [e.to_json() for e in EXAMPLES], tail='{"time": 5.0, "event": "ep')  # killed while writing
    assert ev.read_events(path) == EXAMPLES
    _write(path, [{"time": 1.0, "event": "epoch", "stage": "pre", "epoch": 1}, EXAMPLES[0].to_json()])  # no step
    assert ev.read_events(path) is None


def test_metrics_file_keeps_the_replayed_lines_and_drops_a_stage_cut_short(tmp_path):
    path = tmp_path / "metrics.jsonl"
    pre, level_1 = EXAMPLES[0], ev.EpochEvent(stage="level_1", level=1, step=28, epoch=1, time=9.0)
    _write(path, [pre.to_json(), level_1.to_json()], tail='{"time": 5.0, "ev')  # level_1 was cut short
    before = path.read_bytes()
    sink = MetricsFile(path)
    sink.emit(pre)  # the restored stage's event: the file already holds it
    assert path.read_bytes() == before
    again = ev.EpochEvent(stage="level_1", level=1, step=28, epoch=1, metrics={"train_loss": 0.25}, time=10.0)
    sink.emit(again)  # level_1 done anew: the file is the replayed line, then the new one
    assert _lines(path) == [pre.to_json(), again.to_json()]
    sink.emit(EXAMPLES[1])
    sink.close()
    assert _lines(path) == [pre.to_json(), again.to_json(), EXAMPLES[1].to_json()]
    assert not list(tmp_path.glob(".*tmp"))


def test_metrics_file_of_an_older_schema_is_only_appended_to(tmp_path):
    path = tmp_path / "metrics.jsonl"
    old = {"time": 1.0, "event": "level", "level": 1, "sparsity_target": 0.5, "sparsity": 0.5}
    _write(path, [old])
    sink = MetricsFile(path)
    sink.emit(EXAMPLES[0])
    assert _lines(path) == [old, EXAMPLES[0].to_json()]


class _Kept:
    def __init__(self, fail=False):
        self.events, self.closed, self.fail = [], False, fail

    def emit(self, event):
        self.events.append(event)

    def close(self):
        self.closed = True
        if self.fail:
            raise OSError("tracker gone")


def test_sinks_send_every_event_to_each_and_close_all_even_when_one_fails():
    a, b = _Kept(fail=True), _Kept()
    sinks = ev.Sinks([a, b])
    assert isinstance(sinks, ev.EventSink) and isinstance(a, ev.EventSink)
    for e in EXAMPLES:
        sinks.emit(e)
    with pytest.raises(OSError, match="tracker gone"):
        sinks.close()
    assert a.events == b.events == EXAMPLES and a.closed and b.closed


def _watch(monkeypatch):
    """Every sink a run opens also feeds a list: what a tracker attached beside metrics.jsonl would see."""
    seen = []
    opened = RunFolder.events

    def events(self):
        kept = _Kept()
        seen.append(kept)
        return ev.Sinks([opened(self), kept])

    monkeypatch.setattr(RunFolder, "events", events)
    return seen


def test_a_resumed_run_emits_the_events_of_an_uninterrupted_one(tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config("prune.n_iter=3")
    seen = _watch(monkeypatch)
    run_experiment(cfg, tmp_path / "full", quiet=True)
    full = _lines(tmp_path / "full" / "metrics.jsonl")
    assert [e.to_json() for e in seen[0].events] == full  # the sink and the file get the same events

    save_level, calls = RunFolder.save_level, []

    def stops(self, k, *args, **kwargs):  # the process is killed as round 2 writes its files
        calls.append(k)
        if k == 2:
            raise KeyboardInterrupt
        save_level(self, k, *args, **kwargs)

    monkeypatch.setattr(RunFolder, "save_level", stops)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "resumed", quiet=True)
    cut = _lines(tmp_path / "resumed" / "metrics.jsonl")
    assert calls == [1, 2] and [e["event"] for e in cut if e["stage"] == "level_2"] == ["epoch", "level", "stage"]
    monkeypatch.undo()  # the stop and the watcher
    seen = _watch(monkeypatch)
    run_experiment(cfg, tmp_path / "resumed", quiet=True)
    resumed = _lines(tmp_path / "resumed" / "metrics.jsonl")
    assert _untimed(resumed) == _untimed(full)
    # the resumed process's sinks saw the restored stages too (pre, level_1), with their original lines
    assert [e.to_json() for e in seen[0].events] == resumed

    kinds = [(e["event"], e["stage"]) for e in full]
    assert kinds == [("epoch", "pre"), ("stage", "pre"),
                     *[x for k in (1, 2, 3) for x in (("epoch", f"level_{k}"), ("level", f"level_{k}"),
                                                      ("stage", f"level_{k}"))],
                     ("epoch", "post"), ("stage", "post"), ("summary", "post")]  # fmt: skip
    # the global step: optimizer steps since the run's start, one epoch = ceil(n_train / batch_size) steps
    per_epoch = math.ceil(len(load_splits(cfg).train[1]) / cfg.train.batch_size)
    epochs = [e for e in full if e["event"] == "epoch"]
    assert [e["step"] for e in epochs] == [per_epoch * i for i in range(1, len(epochs) + 1)]
    rounds = [e for e in full if e["event"] == "level"]
    assert [(e["level"], e["step"], e["target_kind"]) for e in rounds] == [(k, per_epoch * (1 + k), "sparsity")
                                                                          for k in (1, 2, 3)]  # fmt: skip
    assert all(e["T"] == per_epoch for e in rounds)  # the round's recorded steps, flat beside the schema's fields

"""Recorded-step time and trajectory memory: channel-level (grouped) against weight-level recording.

For each model, two copies train side by side on the same random batches (batch 64, plain
SGD): one recorded per weight (`TrajectoryRecorder(model, ..., mask=None)`), one per channel
group (`layout=channel_groups(model, x).layout()`, one segment-sum per step). Steps are
interleaved so that drift in the machine's speed hits both alike; the median recorded-step
time of each and their ratio are printed, with the stored trajectory's bytes against
T × G × 4 (the structured issue's targets: grouped step ≤ 1.1 × the weight-level step;
memory ≤ T × G × bytes + O(d)). One JSON line per model. Run: python benchmarks/group_recording.py
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from torch import nn

from causalprune.groups import channel_groups
from causalprune.models import create_model
from causalprune.trajectory import TrajectoryRecorder

MODELS = {  # name → (constructor kwargs, one sample's shape)
    "cnn1d": ({"length": 40, "widths": (64, 64, 64), "batchnorm": True}, (1, 40)),
    "resnet20-B": ({"name": "resnet20", "shortcut": "B"}, (3, 32, 32)),
}


def _bytes(rec: TrajectoryRecorder) -> int:
    X = rec.trajectory().X
    return X.numel() * X.element_size()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--steps", type=int, default=60)
    a = ap.parse_args()
    for key in a.models.split(","):
        kwargs, shape = dict(MODELS[key][0]), MODELS[key][1]
        name = kwargs.pop("name", key)
        torch.manual_seed(0)
        base = create_model(name, **kwargs)
        recorders, models = {}, {}
        for kind in ("weight", "channel"):
            m = copy.deepcopy(base)
            opt = torch.optim.SGD(m.parameters(), lr=0.01)
            layout = channel_groups(m, torch.zeros(1, *shape)).layout() if kind == "channel" else None
            recorders[kind] = TrajectoryRecorder(m, nn.CrossEntropyLoss(), opt, layout=layout, capacity=a.steps + 5)
            models[kind] = m
        g = torch.Generator().manual_seed(0)
        times: dict[str, list[float]] = {"weight": [], "channel": []}
        for step in range(a.steps + 5):
            x, y = torch.randn(64, *shape, generator=g), torch.randint(0, 10, (64,), generator=g)
            for kind in (("weight", "channel") if step % 2 else ("channel", "weight")):
                t0 = time.perf_counter()
                recorders[kind].step(x, y)
                if step >= 5:  # warm-up steps are not timed
                    times[kind].append(time.perf_counter() - t0)
        w, c = statistics.median(times["weight"]), statistics.median(times["channel"])
        T = a.steps + 5
        G = recorders["channel"].n_columns
        print(json.dumps({
            "model": key, "d": recorders["weight"].d, "G": G, "T": T,
            "step_ms_weight": round(1000 * w, 3), "step_ms_channel": round(1000 * c, 3),
            "ratio_channel_over_weight": round(c / w, 3),
            "bytes_weight": _bytes(recorders["weight"]), "bytes_channel": _bytes(recorders["channel"]),
            "bytes_T_G_4": T * G * 4, "threads": torch.get_num_threads(), "torch": torch.__version__,
        }), flush=True)  # fmt: skip
        for r in recorders.values():
            r.close()


if __name__ == "__main__":
    main()

"""TensorBoard logging for training runs: one writer, fixed tag names, hparams in the same file.

Tags written once per epoch (global step = epochs completed, 1-based)::

    train/loss, val/loss                      mean loss per patch (the run's --loss)
    train/micro_f1, train/macro_f1            on the training batches of the epoch (this process's)
    val/micro_f1, val/macro_f1, val/micro_map, val/macro_map, val/micro_f2, val/macro_f2, ...
    lr                                        learning rate of the first parameter group
    throughput/patches_per_s                  training patches per second over the epoch (all processes)

At the end of a run, :meth:`RunWriter.hparams` writes the run's hyper-parameters with the
test metrics (``hparam/test_micro_f1`` ...) so TensorBoard's HParams tab compares runs. The
reader is :func:`read_scalars` (TensorBoard's ``EventAccumulator``), used by ``benzarr report``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Scalar tags, in the order ``benzarr report`` plots them.
LOSS_TAGS = ("train/loss", "val/loss")
F1_TAGS = ("train/micro_f1", "val/micro_f1", "train/macro_f1", "val/macro_f1")


class RunWriter:
    """A thin wrapper over ``torch.utils.tensorboard.SummaryWriter`` for one run folder.

    Args:
        log_dir: the run folder; event files go directly into it.
        purge_step: on resume, the first epoch step to write; events of a crashed attempt at
            or after it are hidden by TensorBoard (its ``purge_step``).
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # ~1.5 s import: only when a run starts

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def scalars(self, step: int, values: Mapping[str, float | None]) -> None:
        """Write ``tag -> value`` at ``step``; ``None`` and NaN values are skipped."""
        for tag, value in values.items():
            if value is None or value != value:  # NaN: e.g. macro F1 with no class present
                continue
            self.writer.add_scalar(tag, float(value), global_step=step)
        self.writer.flush()

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float | None]) -> None:
        """Write the HParams summary into this run's own event file (not a sub-folder, as
        ``SummaryWriter.add_hparams`` would), so one folder is one run."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        clean_h = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        clean_m = {f"hparam/{k}": float(v) for k, v in metrics.items() if v is not None and v == v}
        exp, ssi, sei = hparams_summary(clean_h, clean_m)
        file_writer = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            file_writer.add_summary(summary)
        for tag, value in clean_m.items():
            self.writer.add_scalar(tag, value)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


def read_scalars(run_dir: str | Path) -> dict[str, dict[int, float]]:
    """Every scalar series of a run folder's event files: tag -> {step: value}.

    When a step was written twice (a resumed run), the later value wins.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    # TensorBoard logs, on stderr and between report's own lines, "Detected out of order event.step
    # likely caused by a TensorFlow restart. Purging expired events ..." of every run resumed from
    # before an epoch it had logged: the purge is what a resumed run's purge_step asks for
    tb_logger = logging.getLogger("tensorboard")
    level = tb_logger.level
    tb_logger.setLevel(logging.ERROR)
    try:
        acc.Reload()
    finally:
        tb_logger.setLevel(level)
    out: dict[str, dict[int, float]] = {}
    for tag in acc.Tags().get("scalars", []):
        series: dict[int, float] = {}
        for event in sorted(acc.Scalars(tag), key=lambda e: e.wall_time):
            series[int(event.step)] = float(event.value)
        out[tag] = dict(sorted(series.items()))
    return out

"""Progress of a running population, reported from inside the compiled program once per epoch per call.

:func:`jax_unlearn.engine.run.make_run` takes an ``on_epoch`` host function and calls it with the epoch
index through ``jax.debug.callback`` at the end of every epoch; the lane's ``finite`` flag is a second
operand, so the callback waits for the epoch's results (an ``optimization_barrier`` on the index alone let
XLA:CPU run it as the epoch began). Under ``jax.vmap`` over lanes the callback therefore runs once per lane
and epoch (on every device that holds some of the lanes), all with the same index: the reporter counts an
epoch once, so a chunk still prints one line per epoch. On a single CPU
:func:`~jax_unlearn.engine.run.run_seeds` calls a one-lane program once per seed
(:func:`~jax_unlearn.engine.lanes.lanes_per_call`), so there the report is per epoch per seed, and lines
say ``seed k/n`` instead of ``chunk k/n``.

:class:`EpochProgress` is that host function plus the display: a tqdm bar (epochs of all chunks still to
run, img/s, ETA) when stderr is a terminal, otherwise one plain line per epoch (logs, CI, notebooks).
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class EpochProgress:
    """Per-epoch progress of a chunked population run.

    Args:
      desc: a label (the method).
      epochs: epochs per chunk (the scan length of one run).
      images_per_epoch: training images one lane processes per epoch (for img/s).
      bar: a tqdm bar (True), plain lines (False), or None: a bar when ``stream`` is a terminal.
      stream: where to write (default ``sys.stderr``).

    The engine calls :meth:`start` once with the chunks still to run, :meth:`start_chunk` before each
    chunk, the instance itself (``on_epoch``) from inside the program after each epoch, and :meth:`close`.
    img/s counts the lanes of the chunk that are kept (padding lanes excluded); the first epoch of the
    first chunk includes compilation, so its rate is reported as such.
    """

    def __init__(self, desc: str, epochs: int, images_per_epoch: int, *, bar: bool | None = None,
                 stream: TextIO | None = None):
        self.desc, self.epochs, self.images_per_epoch = desc, int(epochs), int(images_per_epoch)
        self.stream = stream if stream is not None else sys.stderr
        self.use_bar = self.stream.isatty() if bar is None else bar
        self._bar = None
        self.n_chunks = self.chunks_done = 0
        self.unit = "chunk"
        self.chunk = self.lanes = self.epoch_seen = -1
        self._t_chunk = self._t_last = 0.0
        self._compiled = False
        self.lines: list[str] = []

    def start(self, n_chunks: int, unit: str = "chunk") -> None:
        """``n_chunks`` compiled calls remain to run, each a ``unit`` (``'chunk'`` of lanes, or one ``'seed'``)."""
        self.n_chunks, self.chunks_done, self.unit = int(n_chunks), 0, unit
        if self.use_bar and self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.n_chunks * self.epochs, desc=self.desc, unit="epoch", file=self.stream)

    def start_chunk(self, chunk: int, lanes: int) -> None:
        """Chunk ``chunk`` (its number in the run) starts with ``lanes`` kept lanes."""
        self.chunk, self.lanes, self.epoch_seen = int(chunk), int(lanes), -1
        self._t_chunk = self._t_last = time.perf_counter()

    def end_chunk(self) -> None:
        self.chunks_done += 1
        self._compiled = True

    def __call__(self, epoch) -> None:
        """The in-program hook: epoch ``epoch`` (0-based) of the running chunk is done."""
        epoch = int(epoch)
        if epoch <= self.epoch_seen:  # reported already (another lane, or another device's lanes)
            return
        now = time.perf_counter()
        done_epochs = epoch - self.epoch_seen
        self.epoch_seen = epoch
        seconds, self._t_last = now - self._t_last, now
        rate = self.images_per_epoch * self.lanes * done_epochs / max(seconds, 1e-9)
        first = not self._compiled and epoch == done_epochs - 1  # the chunk's first report includes compilation
        left_epochs = (self.epochs - 1 - epoch) + (self.n_chunks - self.chunks_done - 1) * self.epochs
        per_epoch = (now - self._t_chunk) / (epoch + 1)
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.unit} {self.chunks_done + 1}/{self.n_chunks}, "
                                      f"{rate:,.0f} img/s" + (" (incl. compile)" if first else ""))
            self._bar.update(done_epochs)
            return
        line = (f"[{self.desc}] {self.unit} {self.chunks_done + 1}/{self.n_chunks} epoch {epoch + 1}/{self.epochs}: "
                f"{rate:,.0f} img/s" + (" (incl. compile)" if first else "") +
                f", ETA {_duration(left_epochs * per_epoch)}")
        self.lines.append(line)
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

"""Preparing a first sync's rows in a second process, so that the run's own process is not the bottleneck.

A streamed first sync runs in one Python process whose interpreter lock every step takes: reading the
model, digesting its rows, preparing identifiers (a quarter of its CPU), staging, journaling. The worker
takes the source digests, the identifier preparation and the encoding of stage rows (identifiers as
stored, fingerprints), a chunk ahead of the run (:class:`PreparerProcess`), on the machine's other core.

The worker is this module run as ``python -m airflow_provider_fbca.sync.worker``: started with
:mod:`subprocess` (``multiprocessing`` would import the task's ``__main__``, Airflow itself), it imports
no Airflow, reads requests from its standard input (pickled, protocol 5: a driver's cells may be dates or
decimals) and answers on its standard output (marshalled: tuples, lists and strings only, which marshal
encodes three times faster than pickle and loads a third faster). It exits when its input closes, so a
parent killed even with SIGKILL leaves no worker behind. Its answers are exactly those of an in-process
:class:`~airflow_provider_fbca.identifiers.RowPreparer` (the same code runs); an error in it fails the run
with its type and place, never a value.
"""

from __future__ import annotations

import contextlib
import marshal
import pickle
import queue
import subprocess
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import IO, Any

from airflow_provider_fbca.identifiers.batch import PreparedBatch, RowPreparer
from airflow_provider_fbca.sync.dialects import client_row_digest
from airflow_provider_fbca.sync.plan import RowStager
from airflow_provider_fbca.sync.state import decode_identifiers

#: A streamed first sync of fewer rows prepares them in its own process: starting the worker (0.1-0.3 s)
#: costs more than it saves below some 50,000 rows (preparation takes about 8 µs a row).
MIN_ROWS = 50_000
_PROTOCOL = 5
_ERROR = "error"


class PreparerProcessError(RuntimeError):
    """The worker process failed or died; the run fails before sending the rows it was preparing."""


# -- the worker's side ------------------------------------------------------------------------------------


def answer(request: tuple[Any, ...], preparer: RowPreparer, stager: RowStager, seed: str) -> tuple[Any, ...]:
    """What the worker answers to one chunk: ``(source digests or None, kept rows encoded, *the prepared
    batch's other lists)``; a kept row is encoded as its stage row stores it (:meth:`.RowStager.encode`).

    :param request: ``(rows, has_membership, digested)``: the chunk as read (``(digest, *cells)`` each when
        the database digested it, then no digests are sent back), whether its rows end in membership.
    :param preparer: the run's preparer, rebuilt in the worker.
    :param stager: encodes the kept rows.
    :param seed: the run's digest seed (see :func:`.dialects.client_row_digest`).
    """
    rows, has_membership, digested = request
    digests = None
    if digested:
        rows = [row[1:] for row in rows]
    else:
        digests = [client_row_digest(seed, row) for row in rows]
    batch = preparer.prepare_rows([row[:-1] for row in rows] if has_membership else rows)
    encoded = list(map(stager.encode, batch.rows))
    return digests, encoded, batch.kept, batch.rejected, batch.dropped_at, batch.rejected_reasons


def serve(reader: IO[bytes], writer: IO[bytes]) -> None:
    """Answer requests until the input closes: first ``(keys, default_country, seed)``, then chunks.

    :param reader: the requests (the worker's standard input).
    :param writer: the answers (its standard output).
    """
    keys, default_country, seed = pickle.load(reader)
    preparer = RowPreparer(keys, default_country=default_country)
    stager = RowStager(preparer.schema)
    while True:
        try:
            request = pickle.load(reader)
        except EOFError:
            return  # the run is over, or died
        try:
            reply: tuple[Any, ...] = answer(request, preparer, stager, seed)
        except Exception as error:
            reply = (_ERROR, _describe(error))
        marshal.dump(reply, writer)
        writer.flush()


def _describe(error: Exception) -> str:
    """The error's type and where it was raised: never its message, which may quote a cell."""
    frame = traceback.extract_tb(error.__traceback__)[-1]
    return f"{type(error).__name__} at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} ({frame.name})"


# -- the run's side ---------------------------------------------------------------------------------------


class PreparerProcess:
    """A worker process preparing chunks for this run, in order, while the run sends the previous ones.

    :meth:`submit` a chunk, then :meth:`result` it (in the order submitted); submitting chunk k+1 before
    taking chunk k's result is what overlaps the two processes. Use as a context manager.

    :param arguments: what builds the run's preparer (``RowPreparer.arguments``).
    :param seed: the run's digest seed.
    :param python: the interpreter to run the worker (this one).
    """

    def __init__(
        self, arguments: tuple[Sequence[str], str | None], seed: str, python: str = sys.executable
    ) -> None:
        self.process = subprocess.Popen(
            [python, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # a traceback may quote a cell: errors come back described
        )
        self._requests: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        # Written by a thread: a request blocked on a full pipe must not stop the run reading answers.
        self._writer = threading.Thread(target=self._write, name="fbca-preparer-feed", daemon=True)
        self._writer.start()
        keys, default_country = arguments
        self._requests.put((tuple(keys), default_country, seed))

    def submit(self, rows: Sequence[Sequence[Any]], has_membership: bool, digested: bool) -> None:
        """Send a chunk to be prepared (see :func:`answer`)."""
        self._requests.put((rows, has_membership, digested))

    def result(self) -> tuple[list[int] | None, PreparedBatch, list[tuple[str, str, str]]]:
        """The next submitted chunk's source digests (None for a digested chunk), prepared batch and kept
        rows encoded (see :func:`answer`).

        :raises PreparerProcessError: the worker failed on the chunk, or died.
        """
        assert self.process.stdout is not None
        try:
            reply = marshal.load(self.process.stdout)
        except EOFError:
            code = self.process.wait()
            raise PreparerProcessError(
                f"The identifier preparation worker exited (code {code}) before answering; the run sent "
                "nothing it had not recorded. Run again, or set prepare_in_subprocess=False."
            ) from None
        if reply[0] == _ERROR:
            raise PreparerProcessError(f"Preparing identifiers in the worker process failed: {reply[1]}.")
        digests, encoded, kept, rejected, dropped_at, rejected_reasons = reply
        # The wire rows travel once, as stored: splitting them back costs less than pickling them twice.
        rows = [decode_identifiers(identifiers) for identifiers, _, _ in encoded]
        batch = PreparedBatch(
            rows=rows, kept=kept, rejected=rejected, dropped_at=dropped_at, rejected_reasons=rejected_reasons
        )
        return digests, batch.count_reasons(), encoded

    def close(self) -> None:
        """Close the worker's input (it exits) and wait for it.

        Its output is closed first: after a failed run it may be writing an answer no one will read (it
        then exits on the broken pipe), while the feeding thread waits on a request it no longer reads.
        """
        self._requests.put(None)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._writer.join()
        self.process.wait()

    def __enter__(self) -> PreparerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            while (request := self._requests.get()) is not None:
                pickle.dump(request, stdin, protocol=_PROTOCOL)
                stdin.flush()
        except OSError:
            pass  # the worker died: the run learns it from its output, at the next result
        finally:
            with contextlib.suppress(OSError):
                stdin.close()


def main() -> None:
    """The worker's entry point (``python -m airflow_provider_fbca.sync.worker``)."""
    with contextlib.suppress(BrokenPipeError):  # the run is gone
        serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()

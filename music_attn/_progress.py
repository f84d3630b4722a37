"""Progress of long jobs on stderr: a tqdm bar on a terminal, plain lines in a log.

``progress(total, desc)`` gives an object with ``update(n=1, what="")`` and
``close()`` (also a context manager).  On a terminal it is a tqdm bar; when
stderr is a file or a pipe (a CI log, ``2> log``) it prints a plain line
``desc: 3/7 (43%) what, 12 s`` at most every ``every`` seconds and one when
done, so a log shows the job moving without a wall of carriage returns.
Nothing is printed before ``delay`` seconds have passed, so a job that turns
out to be quick stays silent.

Run: ``with progress(len(files), "bench tokenize") as bar: ... bar.update()``.
"""

import sys
import time

__all__ = ["progress"]


class _Lines:
    """Plain progress lines on a stream that is not a terminal."""

    def __init__(self, total, desc, file, delay, every):
        self.total, self.desc, self.file = total, desc, file
        self.delay, self.every = delay, every
        self.n, self.t0, self.last, self.shown = 0, time.monotonic(), None, False

    def update(self, n=1, what=""):
        self.n += n
        now = time.monotonic()
        due = self.last is None or now - self.last >= self.every or self.n >= (self.total or float("inf"))
        if due and now - self.t0 >= self.delay:
            self._line(what, now)

    def _line(self, what, now):
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        self.file.write(f"{self.desc}: {count}{share}{' ' + what if what else ''}, {now - self.t0:.0f} s\n")
        self.file.flush()
        self.last, self.shown = now, True

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Bar:
    """A tqdm bar with the same ``update(n, what)`` as the lines."""

    def __init__(self, total, desc, file, delay, unit):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit=unit, file=file, leave=False, delay=delay)

    def update(self, n=1, what=""):
        if what:
            self.bar.set_postfix_str(what, refresh=False)
        self.bar.update(n)

    def close(self):
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(total, desc, *, unit="step", delay=0.0, every=5.0, file=None):
    """A progress display of ``total`` steps (None: unknown) on ``file`` (default stderr)."""
    file = sys.stderr if file is None else file
    if getattr(file, "isatty", lambda: False)():
        return _Bar(total, desc, file, delay, unit)
    return _Lines(total, desc, file, delay, every)

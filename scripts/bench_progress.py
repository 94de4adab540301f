"""Progress lines for the bench and soak scripts, on stderr only: their
stdout ends with the JSON line other scripts parse.

    progress = Progress("bench-clone", total=15)
    progress.done("memfd shells=True")
    # bench-clone: [ 42s] memfd shells=True done (3/15)

`done()` prints at most one line every `every` seconds (and always the last
one), so a loop of 100 quick restores prints a few lines, not 100; `tick()`
likewise but without a count; `note()` prints at once. BENCH_QUIET=1 silences them.
"""
import os, sys, time


class Progress:
    def __init__(self, name, total=None, every=5.0):
        self.name, self.total, self.every = name, total, every
        self.count = 0
        self.start = time.monotonic()
        self.last = None
        self.quiet = os.environ.get("BENCH_QUIET", "") not in ("", "0")

    def note(self, what):
        """A line now: `NAME: [ 12s] WHAT`."""
        self._line(what)

    def tick(self, what):
        """A line if one is due (every `every` seconds): for a loop that
        only waits."""
        if self.last is None or time.monotonic() - self.last >= self.every:
            self._line(what)

    def done(self, what, n=1):
        """Counts `n` more units of work done, the last being `what`."""
        self.count += n
        due = self.last is None or time.monotonic() - self.last >= self.every
        if due or self.count == self.total:
            counts = f"{self.count}/{self.total}" if self.total else str(self.count)
            self._line(f"{what} done ({counts})")

    def _line(self, what):
        self.last = time.monotonic()
        if not self.quiet:
            elapsed = self.last - self.start
            print(f"{self.name}: [{elapsed:>3.0f}s] {what}", file=sys.stderr, flush=True)

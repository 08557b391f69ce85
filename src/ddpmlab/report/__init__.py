"""The report of a run: one self-contained folder that shows what the run learned.

``ddpmlab report RUN`` (:func:`write_report`) writes ``RUN/report/index.html`` and ``img/``:
the tutorial's five steps on the run's own data and model (a forward-process slider, reverse
chains to scrub through, the ELBO term by term, the loss and the samples of every checkpoint,
samples per class, against guidance and against the number of network evaluations) and the
run's evaluation. The page needs no server and no network: styles, script and data are inline,
the pictures are PNG files beside it, and a Content-Security-Policy forbids any other request.
Its text exists in English and Chinese (:data:`LANGS`).

:mod:`.build` computes and draws (layer 5: it composes the run layer, the math, ``viz`` and
``evaluate``); :mod:`.page` writes the HTML from ``page.html``, ``report.css`` and
``report.js``; :mod:`.strings` holds the text. ``LANGS`` is importable without torch (the
command line's ``--lang`` choices); the rest loads on first use.
"""

from __future__ import annotations

from typing import Any

from .strings import STRINGS

LANGS: tuple[str, ...] = tuple(STRINGS)

__all__ = ["LANGS", "ReportPlan", "write_report"]


def __getattr__(name: str) -> Any:
    if name in ("ReportPlan", "write_report"):
        from . import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

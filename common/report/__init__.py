"""The human report of a run or an evaluation: ``report.md``, ``report.html`` and ``figures/*.png``."""

from common.report.build import build_report
from common.report.html import render_html
from common.report.markdown import render_markdown

__all__ = ["build_report", "render_html", "render_markdown"]

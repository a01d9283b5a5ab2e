"""The HTML report of a finished run: tables and figures, computed elsewhere, drawn here."""

from mnemoscope.report.html import most_memorized, render_report

__all__ = ["most_memorized", "render_report"]

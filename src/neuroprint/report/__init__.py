"""Self-contained HTML reports of evaluation, robustness and ownership records (above all three packages; the
JSON records are their contract). `write_report(records, out)` builds one page from one or several records."""
from neuroprint.report.build import write_report

__all__ = ["write_report"]

"""Evaluation: score populations of models in run folders — ``report`` (accuracies, the competition score,
MIAs, report.json), ``sweep`` (scoring the settings of a sweep), ``plots`` (the report's figures)."""

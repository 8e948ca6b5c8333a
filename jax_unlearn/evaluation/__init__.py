"""Evaluation: score populations of models in run folders — ``report`` (accuracies, the competition score,
MIAs, report.json), ``outputs`` (each model's outputs over the data), ``sweep`` (scoring the settings of a
sweep), ``plots`` (the report's figures)."""

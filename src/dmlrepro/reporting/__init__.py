"""Reporting: paper tables, sweep figures, statistics over seeds and the MLflow record."""

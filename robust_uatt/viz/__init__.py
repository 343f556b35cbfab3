"""Presentation: rich/Markdown tables and plots."""

"""Detection on long recordings: windows -> net -> events (detect.py), Raven tables (raven.py), scoring
against annotations (evaluate.py)."""

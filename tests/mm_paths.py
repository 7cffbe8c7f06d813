"""Paths shared by tests (a uniquely named module: several conftest.py files exist, so tests
must not import from ``conftest``)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_TINY = os.path.join(ROOT, "recipes", "text_classification", "tiny.yaml")

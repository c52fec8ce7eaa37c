"""The rule tests import their graph helpers from graphs.py next to them."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

"""The tests' fake OpenAI: `fake_openai.py` at the repository root, shared with the benchmarks."""

from fake_openai import *  # noqa: F403

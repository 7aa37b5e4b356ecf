"""The tests' fake OpenAI: `benchmarks/fake_openai.py`, shared with the benchmarks."""

from benchmarks.fake_openai import *  # noqa: F403

"""The tests' fake OpenAI: `benchmarks/fake_openai.py` (the server) and
`benchmarks/openai_payloads.py` (the documented shapes), shared with the benchmarks."""

from benchmarks.fake_openai import *  # noqa: F403
from benchmarks.openai_payloads import *  # noqa: F403

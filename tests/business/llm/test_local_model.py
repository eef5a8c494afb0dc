"""End to end with the real embedded model: ``manage_business.py run_local_llm`` starts llama.cpp's
OpenAI-compatible server with the packaged Gemma 3 270M GGUF (as the Procfile's ``llm-local`` does),
``ensure_default_provider`` registers it (as ``make run`` does), and ``open_stream`` streams a real
answer. The model is a tiny base model, so the assertions are about structure, never about the text.

Slow-ish: the first run assembles the GGUF (about 250 MB) into the test var dir; loading takes seconds.
"""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from business_project.llm.events import StreamEnd, TextDelta
from business_project.llm.services import open_stream
from tests.business.llm.conftest import run


@pytest.mark.django_db
def test_a_real_answer_streams_from_the_embedded_model(local_llm_server):
    call_command("ensure_default_provider", base_url=local_llm_server, stdout=StringIO())

    async def go():
        stream = await open_stream(
            messages=[{"role": "user", "content": "Hello, how are you?"}],
            params={"max_tokens": 24, "temperature": 0, "seed": 42},
        )
        return stream, [event async for event in stream]

    stream, events = run(go)

    assert (stream.provider.name, stream.model) == ("local", "gemma-3-270m")
    assert stream.attempts == ()
    assert 0 < stream.time_to_first_token < 60
    deltas = [event for event in events if isinstance(event, TextDelta)]
    ends = [event for event in events if isinstance(event, StreamEnd)]
    assert len(deltas) >= 1
    assert all(delta.text for delta in deltas)
    assert len(ends) == 1
    assert events[-1] is ends[0]
    end = ends[0]
    assert end.stop_reason in {"stop", "length"}
    assert end.usage.completion_tokens > 0
    assert end.usage.prompt_tokens > 0
    assert end.duration >= stream.time_to_first_token

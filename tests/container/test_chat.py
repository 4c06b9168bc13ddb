"""Chat input (`{"messages": [...]}`) and the translation traps between TGI and OpenAI dialects, one
test per trap: TGI's /generate rejects temperature 0 (and TGI chat needs it for greedy), TGI rejects
top_p 1.0, TGI chat turns presence_penalty p into repetition penalty p + 2, vLLM ignores unknown keys."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from enginekit import engine_env, job, localtgi_url
from fakeengines import FakeVLLM
from faketgi import FakeTGI
from infernet_tgi.chat import ChatTemplate
from infernet_tgi.errors import ConfigError
from infernet_tgi.upstream.base import GenerationRequest
from infernet_tgi.upstream.openai import Dialect, request_body

CHAT = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Why is the sky blue?"},
]


async def run(client: Any, body: dict[str, Any]) -> tuple[int, Any]:
    response = await client.post("/service_output", json=body)
    text = await response.get_data(as_text=True)
    if response.content_type.startswith("application/json"):
        return response.status_code, json.loads(text)
    return response.status_code, text


@pytest.fixture(scope="module")
def tgi_url() -> str:
    return localtgi_url()


@pytest.fixture(scope="module")
def vllm() -> Iterator[FakeVLLM]:
    with FakeVLLM() as server:
        yield server


def chat_job(parameters: dict[str, Any] | None = None, destination: int = 1) -> dict[str, Any]:
    data: dict[str, Any] = {"messages": CHAT}
    if parameters is not None:
        data["parameters"] = parameters
    return job(data, destination)


# -- chat routes and templates ----------------------------------------------------------------------


def test_builtin_chatml_renders_like_smollm2() -> None:
    prompt = ChatTemplate.load("chatml").render(CHAT)
    assert prompt == (
        "<|im_start|>system\nYou answer briefly.<|im_end|>\n"
        "<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_template_settings_are_checked_at_startup(tmp_path: Any) -> None:
    path = tmp_path / "t.jinja"
    path.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}>")
    assert ChatTemplate.load(f"@{path}").render(CHAT[1:]) == "[user] Why is the sky blue?\n>"
    bad_specs = (
        ("nonsense", "expected one of"),
        ("{{ x", "TGI_INF_CHAT_TEMPLATE: chat template (custom) does not compile"),
        ("@/nope", "cannot read"),
        ("{{ messages[5]['content'] }}", "TGI_INF_CHAT_TEMPLATE: chat template (custom) failed"),
    )
    for bad, fragment in bad_specs:
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            ChatTemplate.load(bad)


async def test_chat_route_and_template_give_the_same_greedy_answer(app_for: Any, tgi_url: str) -> None:
    """TGI kind: chat jobs go to /v1/chat/completions; with TGI_INF_CHAT_TEMPLATE=chatml they go to
    /generate as the rendered prompt. Same model template, greedy: same text."""
    route = await app_for(engine_env(tgi_url))
    template = await app_for(engine_env(tgi_url, TGI_INF_CHAT_TEMPLATE="chatml"))
    status, by_route = await run(route, chat_job({"max_new_tokens": 12}))
    assert status == 200, by_route
    status, by_template = await run(template, chat_job({"max_new_tokens": 12}))
    assert status == 200, by_template
    assert by_route["output"] == by_template["output"] and by_route["output"]
    assert by_route["usage"] == by_template["usage"]
    status, streamed = await run(route, chat_job({"max_new_tokens": 12}, destination=2))
    assert (status, streamed) == (200, by_route["output"])


@pytest.mark.parametrize(
    "data,fragment",
    [
        ({"messages": []}, "`messages`"),
        ({"messages": [{"role": "user"}]}, "`messages.0.content` is required"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
            "messages.0",
        ),
        ({"messages": CHAT, "text": "x"}, 'give "messages" or "text"/"prompt", not both'),
    ],
)
async def test_bad_chat_input_is_a_precise_400(
    app_for: Any, fake: FakeTGI, data: dict[str, Any], fragment: str
) -> None:
    client = await app_for(engine_env(fake.url))
    status, body = await run(client, job(data))
    assert status == 400 and fragment in body["description"], body
    assert fake.requests == []


async def test_chat_on_an_upstream_without_chat_route_needs_a_template(app_for: Any, fake: FakeTGI) -> None:
    env = engine_env(fake.url, TGI_INF_UPSTREAM_KIND="datacrunch", TGI_INF_MODEL="m")
    status, body = await run(await app_for(env), chat_job())
    assert status == 422 and "TGI_INF_CHAT_TEMPLATE" in body["description"]
    env["TGI_INF_CHAT_TEMPLATE"] = "llama3"
    status, body = await run(await app_for(env), chat_job())
    assert status == 200
    sent = fake.requests[-1].body["inputs"]
    assert sent.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou answer")
    assert sent.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


# -- trap 1: temperature 0 ---------------------------------------------------------------------------


async def test_trap_temperature_zero(app_for: Any, fake: FakeTGI, vllm: FakeVLLM, tgi_url: str) -> None:
    """Greedy is `parameters` without sampling knobs on /generate (temperature 0 is a 422 there) and
    an explicit temperature 0 on OpenAI routes (TGI chat samples when temperature is absent)."""
    tgi = await app_for(engine_env(fake.url))
    assert (await run(tgi, job({"text": "x"})))[0] == 200
    assert "temperature" not in fake.requests[-1].body["parameters"]
    openai = await app_for(engine_env(vllm.url, TGI_INF_UPSTREAM_KIND="openai"))
    assert (await run(openai, job({"text": "x"})))[0] == 200
    assert vllm.posts()[-1].body["temperature"] == 0.0
    # against localtgi: the chat route is greedy (same answer twice) because temperature 0 was sent
    live = await app_for(engine_env(tgi_url))
    answers = {(await run(live, chat_job({"max_new_tokens": 10})))[1]["output"] for _ in range(3)}
    assert len(answers) == 1
    # and a job's own temperature 0 is refused with TGI's message before any upstream sees it
    status, body = await run(tgi, job({"text": "x", "parameters": {"temperature": 0.0}}))
    assert status == 422 and "`temperature` must be strictly positive" in body["description"]


# -- trap 2: top_p 1.0 -------------------------------------------------------------------------------


async def test_trap_top_p_one_is_never_sent(app_for: Any, tgi_url: str) -> None:
    """OpenAI's default top_p is 1.0, which TGI rejects: top_p is sent only when the job set it."""
    for flavor in ("tgi", "vllm"):
        for chat in (True, False):
            request = GenerationRequest(
                prompt="x", parameters={"max_new_tokens": 3, "do_sample": True},
                messages=tuple(CHAT) if chat else None,
            )
            _, body = request_body(request, Dialect(flavor), model="m", stream=False, where="u")  # type: ignore[arg-type]
            assert "top_p" not in body, (flavor, chat)
    client = await app_for(engine_env(tgi_url))
    status, body = await run(client, chat_job({"do_sample": True, "max_new_tokens": 4, "seed": 1}))
    assert status == 200, body  # TGI would say "`top_p` must be > 0.0 and < 1.0" to a blind 1.0
    status, body = await run(client, chat_job({"top_p": 0.9, "max_new_tokens": 4, "seed": 1}))
    assert status == 200, body


# -- trap 3: presence_penalty p -> repetition_penalty p + 2 -----------------------------------------


async def test_trap_presence_penalty_offset(app_for: Any, tgi_url: str) -> None:
    """A job's repetition_penalty r reaches TGI's chat route as presence_penalty r - 2: the answer is
    the one /generate gives for r on the same templated prompt, not the one for r + 2."""
    request = GenerationRequest(prompt="", parameters={"repetition_penalty": 1.5}, messages=tuple(CHAT))
    _, body = request_body(request, Dialect("tgi"), model="tgi", stream=False, where="u")
    assert body["presence_penalty"] == pytest.approx(-0.5) and "repetition_penalty" not in body
    _, body = request_body(request, Dialect("vllm"), model="m", stream=False, where="u")
    assert body["repetition_penalty"] == 1.5 and "presence_penalty" not in body
    no_penalty = GenerationRequest(prompt="", parameters={}, messages=tuple(CHAT))
    _, body = request_body(no_penalty, Dialect("tgi"), model="t", stream=False, where="u")
    assert "presence_penalty" not in body

    route = await app_for(engine_env(tgi_url))
    template = await app_for(engine_env(tgi_url, TGI_INF_CHAT_TEMPLATE="chatml"))

    async def answer(client: Any, penalty: float) -> str:
        status, body = await run(client, chat_job({"repetition_penalty": penalty, "max_new_tokens": 24}))
        assert status == 200, body
        return str(body["output"])

    # r = 0.5 (< 1 favours seen tokens, which changes this tiny model's greedy path)
    via_chat = await answer(route, 0.5)
    assert via_chat == await answer(template, 0.5)
    assert via_chat != await answer(template, 2.5)  # what forwarding presence_penalty=0.5 would give


# -- trap 4: vLLM ignores unknown keys ----------------------------------------------------------------


async def test_trap_vllm_ignores_unknown_keys(app_for: Any, vllm: FakeVLLM) -> None:
    """TGI-only knobs that change the answer are refused before sending (vLLM would drop them and
    answer anyway); knobs that only shape TGI's details are not sent at all."""
    client = await app_for(engine_env(vllm.url, TGI_INF_UPSTREAM_KIND="openai"))
    before = len(vllm.posts())
    for parameters, name in (
        ({"typical_p": 0.5}, "typical_p"),
        ({"watermark": True}, "watermark"),
        ({"best_of": 2, "do_sample": True}, "best_of"),
    ):
        status, body = await run(client, job({"text": "x", "parameters": parameters}))
        assert status == 422 and f"`{name}` has no equivalent" in body["description"], body
    assert len(vllm.posts()) == before
    status, _ = await run(client, job({"text": "x", "parameters": {
        "details": True, "decoder_input_details": True, "top_n_tokens": 2, "truncate": 10}}))
    assert status == 200
    sent = vllm.posts()[-1].body
    assert set(sent) == {"model", "prompt", "max_tokens", "temperature", "truncate_prompt_tokens"}

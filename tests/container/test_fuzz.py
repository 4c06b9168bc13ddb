"""Whatever a caller sends, the container answers JSON with a precise status, never a 500."""

from __future__ import annotations

import json
from typing import Any

from eth_abi.abi import encode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from containerkit import env_for
from faketgi import FakeTGI
from infernet_tgi import Settings, create_app

scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=8)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
parameters = st.dictionaries(
    st.sampled_from(
        [
            "temperature",
            "top_p",
            "top_k",
            "max_new_tokens",
            "stop",
            "seed",
            "best_of",
            "do_sample",
            "grammar",
            "response_pool",
            "json_format",
            "typical_p",
            "truncate",
            "bogus",
        ]
    ),
    values,
    max_size=3,
)
offchain = st.fixed_dictionaries(
    {},
    optional={
        "text": st.text(max_size=20) | values,
        "prompt": st.text(max_size=5),
        "parameters": parameters | values,
    },
)
onchain = (
    st.text(alphabet="0123456789abcdefxX", max_size=140)
    | st.binary(max_size=96).map(bytes.hex)
    | st.text(max_size=30).map(lambda t: encode(["string"], [t]).hex())
)
bodies = (
    st.fixed_dictionaries(
        {},
        optional={
            "source": st.sampled_from([0, 1, 2, -1, "1", None, 1.0]),
            "destination": st.sampled_from([0, 1, 2, 3, "0", None]),
            "data": offchain | onchain | values,
            "requires_proof": st.sampled_from([True, False, None, "yes", 0]),
        },
    )
    | values
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
async def test_any_body_gets_json_and_no_500(fake_server: FakeTGI, body: Any) -> None:
    app = create_app(Settings.from_env(env_for(fake_server.url)))
    async with app.test_app():
        response = await app.test_client().post("/service_output", json=body)
        raw = await response.get_data(as_text=True)
    assert response.status_code != 500, raw
    if response.content_type.startswith("application/json"):
        payload = json.loads(raw)
        if response.status_code != 200:
            assert payload["code"] == str(response.status_code) and payload["description"]
        elif "raw_output" in payload:
            assert set(payload) == {"raw_input", "processed_input", "raw_output", "processed_output", "proof"}
            for value in payload.values():
                assert len(value) % 2 == 0 and not value.startswith("0x")
    else:
        assert response.status_code == 200 and response.content_type.startswith("text/plain")

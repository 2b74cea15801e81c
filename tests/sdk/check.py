"""Drives the gateway with the official SDKs (run by tests/api/sdk.rs against the real binary
and the upstream stand-ins). Every call must succeed and return what the stand-ins answer; the
Rust test then checks the ledger. Environment: PR_BASE_URL (http://127.0.0.1:PORT), PR_KEY."""

import os

import anthropic
import openai

BASE, KEY = os.environ["PR_BASE_URL"], os.environ["PR_KEY"]
ANSWER = "Hello, world! Bye."

oa = openai.OpenAI(base_url=f"{BASE}/v1", api_key=KEY, max_retries=0)

# Embeddings: the SDK asks for base64 and decodes it.
emb = oa.embeddings.create(model="embed", input=["a", "b"])
assert [d.embedding for d in emb.data] == [[0.25, -0.5, 1.0]] * 2, emb
assert emb.usage.prompt_tokens == 10, emb.usage

# Legacy completions, plain and streamed.
done = oa.completions.create(model="echo", prompt="Say hi")
assert done.choices[0].text == ANSWER, done
text = "".join(c.choices[0].text for c in oa.completions.create(model="echo", prompt="Say hi", stream=True) if c.choices)
assert text == ANSWER, text

# Responses API, plain and streamed.
resp = oa.responses.create(model="echo", input="Say hi", max_output_tokens=64)
assert resp.output_text == ANSWER, resp
assert (resp.usage.input_tokens, resp.usage.output_tokens) == (12, 34), resp.usage
events = list(oa.responses.create(model="echo", input="Say hi", stream=True))
assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == ANSWER
assert events[-1].type == "response.completed" and events[-1].response.usage.output_tokens == 34

# Our errors parse as the SDK's own exceptions.
try:
    oa.embeddings.create(model="embed", input=[])
    raise SystemExit("an empty input was accepted")
except openai.BadRequestError as e:
    assert e.code == "invalid_request_body", e.body

an = anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0)
msg = an.messages.create(model="claude", max_tokens=64, messages=[{"role": "user", "content": "Say hi"}])
assert msg.content[0].text == ANSWER, msg
assert (msg.usage.cache_read_input_tokens, msg.usage.cache_creation_input_tokens) == (100, 20), msg.usage
with an.messages.stream(model="claude", max_tokens=64, messages=[{"role": "user", "content": "Say hi"}]) as stream:
    assert "".join(stream.text_stream) == ANSWER
    final = stream.get_final_message()
assert final.usage.output_tokens == 34 and final.usage.input_tokens == 12, final.usage
try:
    an.messages.create(model="echo", max_tokens=64, messages=[{"role": "user", "content": "x"}])
    raise SystemExit("a chat model was served on /v1/messages")
except anthropic.BadRequestError as e:
    assert e.body["error"]["type"] == "invalid_request_error", e.body
    assert "/v1/chat/completions" in e.body["error"]["message"], e.body

print("sdk checks passed")

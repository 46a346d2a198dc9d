"""Images and audio (routes/media.py, metering/media.py) through a real gateway and the fake
upstream with the official openai SDK and the Postgres ledger: each request's cost checked to
1e-12 against the price data (genai-prices' rates read here, the price file's written here),
the ledger row equal to the log line, the units' source in price_source."""

from __future__ import annotations

import io
import math
import struct
from datetime import UTC, datetime
from decimal import Decimal

import openai
import pytest

from support import sdk_client
from support.http import admin_call, call
from support.ledger import pg_rows
from support.waiting import wait_until
from tallygate.fake_upstream.media import IMAGE_TOKENS, INPUT_IMAGE_TOKENS, speech_bytes

MILLION = Decimal(1_000_000)
EXACT = Decimal("1e-12")
PRICES = """
[models."dall-e-3".images]
standard = {"1024x1024" = 0.04, "1024x1792" = 0.08, "1792x1024" = 0.08}
hd = {"1024x1024" = 0.08, "1024x1792" = 0.12, "1792x1024" = 0.12}
[models."dall-e-2".images]
standard = {"256x256" = 0.016, "512x512" = 0.018, "1024x1024" = 0.02}
[models."whisper-1"]
input_audio_hours = 0.36
[models."tts-1"]
input_mchars = 15
"""
TRANSCRIPT = "Hello from the fake upstream."


def rates(model: str) -> dict:
    from genai_prices import data_snapshot

    _, info = data_snapshot.get_snapshot().find_provider_model(model, None, "openai", None)
    return dict(info.get_prices(datetime.now(UTC), None).__dict__)


def wav(seconds: float, rate: int = 16000) -> bytes:
    """A mono 16-bit PCM WAV file of `seconds` of silence."""
    data = b"\x00\x00" * int(seconds * rate)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt + \
        b"data" + struct.pack("<I", len(data)) + data


def record_of(gw, env, count: int) -> tuple[dict, dict]:
    """The `count`-th record's log line and its ledger row, which must agree."""
    log = gw.wait_records(count)[count - 1]
    rows = wait_until(lambda: pg_rows(env, "request_id = %s", (log["request_id"],)), message="the ledger row")
    row = rows[0]
    for field in ("prompt_tokens", "completion_tokens", "image_input_tokens", "image_output_tokens",
                  "audio_input_tokens", "audio_output_tokens", "price_source", "endpoint", "model"):
        assert row[field] == log.get(field, 0), field
    assert Decimal(str(row["cost_usd"])) == Decimal(log["cost_usd_exact"])
    return log, row


def cost(log) -> Decimal:
    return Decimal(log["cost_usd_exact"])


@pytest.fixture
def media_gateway(gateway, postgres_env, tmp_path):
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES)
    return gateway(**postgres_env, TALLYGATE_PRICES_FILE=prices)


def test_images_priced_per_image_and_by_tokens(media_gateway, postgres_env):
    gw, env = media_gateway, postgres_env
    client = sdk_client(gw)
    n = 0

    # dall-e-3: per image by quality and size, from the price file
    answer = client.images.generate(model="dall-e-3", prompt="a red fox", n=2, size="1024x1792", quality="hd")
    assert len(answer.data) == 2 and answer.data[0].revised_prompt
    n += 1
    log, _ = record_of(gw, env, n)
    assert log["endpoint"] == "/v1/images/generations" and log["price_source"] == "override"
    assert cost(log) == 2 * Decimal("0.12")

    # dall-e-2 with no size or quality: the API's defaults (1024x1024, standard)
    client.images.generate(prompt="a blue fox", response_format="b64_json")
    n += 1
    log, _ = record_of(gw, env, n)
    assert log["model"] == "dall-e-2" and cost(log) == Decimal("0.02")

    # gpt-image-1: token-priced from genai-prices; its image output at the listed output rate
    prompt = "a green fox in the snow, photographic"
    answer = client.images.generate(model="gpt-image-1", prompt=prompt, size="1024x1536", quality="high")
    assert answer.usage is not None and answer.usage.output_tokens == IMAGE_TOKENS["high"]["1024x1536"]
    n += 1
    log, _ = record_of(gw, env, n)
    r = rates("gpt-image-1")
    text_in, out = len(prompt) // 4, IMAGE_TOKENS["high"]["1024x1536"]
    assert log["image_output_tokens"] == out and log["price_source"] == "genai-prices"
    assert abs(cost(log) - (text_in * r["input_mtok"] + out * r["output_mtok"]) / MILLION) < EXACT

    # gpt-image-1.5 has an image output rate of its own
    answer = client.images.generate(model="gpt-image-1.5", prompt=prompt, quality="medium")
    n += 1
    log, _ = record_of(gw, env, n)
    r = rates("gpt-image-1.5")
    out = IMAGE_TOKENS["medium"]["1024x1024"]
    assert abs(cost(log) - (text_in * r["input_mtok"] + out * r["output_image_mtok"]) / MILLION) < EXACT

    # streamed, with partial images: the usage of the completed event
    events = list(client.images.generate(model="gpt-image-1", prompt=prompt, stream=True, partial_images=2,
                                         quality="low"))
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    n += 1
    log, _ = record_of(gw, env, n)
    out = IMAGE_TOKENS["low"]["1024x1024"] + 200
    r = rates("gpt-image-1")
    assert log["stream"] is True and log["completion_tokens"] == out
    assert abs(cost(log) - (text_in * r["input_mtok"] + out * r["output_mtok"]) / MILLION) < EXACT

    # edits: a multipart upload; input image tokens at the image input rate
    image = io.BytesIO(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 400)
    image.name = "fox.png"
    client.images.edit(model="gpt-image-1", image=image, prompt=prompt, quality="medium")
    n += 1
    log, _ = record_of(gw, env, n)
    assert log["endpoint"] == "/v1/images/edits" and log["image_input_tokens"] == INPUT_IMAGE_TOKENS
    out = IMAGE_TOKENS["medium"]["1024x1024"]
    want = (text_in * r["input_mtok"] + INPUT_IMAGE_TOKENS * r["input_image_mtok"] + out * r["output_mtok"]) / MILLION
    assert abs(cost(log) - want) < EXACT
    image.seek(0)
    answer = client.images.edit(model="dall-e-2", image=image, prompt=prompt, n=3, size="512x512")
    assert len(answer.data) == 3
    n += 1
    log, _ = record_of(gw, env, n)
    assert cost(log) == 3 * Decimal("0.018") and log["price_source"] == "override"

    # the upstream got the whole image, byte for byte in size
    sent = [r for r in gw_requests(gw) if r["path"] == "/v1/images/edits"]
    assert sent and '"bytes":' + str(len(image.getvalue())) in sent[-1]["body"]


def gw_requests(gw) -> list[dict]:
    import orjson

    base = gw.env["OPENAI_BASE_URL"].removesuffix("/v1")
    status, _, data = call(base + "/_fake/requests")
    assert status == 200
    return orjson.loads(data)


def test_audio_transcriptions_translations_and_speech(media_gateway, postgres_env):
    gw, env = media_gateway, postgres_env
    client = sdk_client(gw)
    audio = wav(3.3)
    n = 0
    whisper_cost = 4 * Decimal("0.36") / 3600  # 3.3 s billed as 4 whole seconds

    for fmt in ("json", "verbose_json", "srt", "vtt", "text"):
        answer = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", audio), response_format=fmt)
        text = answer if isinstance(answer, str) else answer.text
        assert TRANSCRIPT in text
        n += 1
        log, _ = record_of(gw, env, n)
        assert log["endpoint"] == "/v1/audio/transcriptions" and log["price_source"] == "override", fmt
        assert cost(log) == whisper_cost, fmt
        # text carries no timing: the WAV header's duration, an estimate of ours
        assert log["usage_source"] == ("estimated" if fmt == "text" else "provider"), fmt

    # translations answer no usage: verbose_json's duration, json the WAV header
    for fmt in ("verbose_json", "json"):
        answer = client.audio.translations.create(model="whisper-1", file=("a.wav", audio), response_format=fmt)
        assert answer.text == TRANSCRIPT
        n += 1
        log, _ = record_of(gw, env, n)
        assert log["endpoint"] == "/v1/audio/translations" and cost(log) == whisper_cost, fmt

    # token-priced transcription: the answer's usage, audio tokens at the audio rate
    r = rates("gpt-4o-transcribe")
    audio_tokens, out = math.ceil(3.3 * 10), len(TRANSCRIPT) // 4
    want = (audio_tokens * r["input_audio_mtok"] + out * r["output_mtok"]) / MILLION
    answer = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", audio))
    assert answer.text == TRANSCRIPT
    n += 1
    log, _ = record_of(gw, env, n)
    assert log["audio_input_tokens"] == audio_tokens and log["price_source"] == "genai-prices"
    assert abs(cost(log) - want) < EXACT
    events = list(client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", audio), stream=True))
    assert events[-1].type == "transcript.text.done" and events[-1].text == TRANSCRIPT
    assert "".join(e.delta for e in events[:-1]) == TRANSCRIPT
    n += 1
    log, _ = record_of(gw, env, n)
    assert log["stream"] is True and abs(cost(log) - want) < EXACT

    # speech: the audio bytes intact, streamed through; tts-1 per character
    text = "Hello there — this is the gateway speaking, ünïcode counted as characters."
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=text) as resp:
        assert resp.headers["content-type"] == "audio/mpeg"
        got = b"".join(resp.iter_bytes())
    assert got == speech_bytes(text)
    n += 1
    log, _ = record_of(gw, env, n)
    assert log["endpoint"] == "/v1/audio/speech" and cost(log) == len(text) * Decimal(15) / MILLION

    # gpt-4o-mini-tts as SSE: its usage, the audio output at the listed output rate
    body = client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input=text, stream_format="sse")
    assert b"speech.audio.done" in body.read()
    n += 1
    log, _ = record_of(gw, env, n)
    r = rates("gpt-4o-mini-tts")
    in_tokens, out = len(text) // 4, len(speech_bytes(text)) // 200
    assert log["audio_output_tokens"] == out and log["price_source"] == "genai-prices"
    assert abs(cost(log) - (in_tokens * r["input_mtok"] + out * r["output_mtok"]) / MILLION) < EXACT


def test_unpriced_media_is_counted_not_blocked(media_gateway, postgres_env):
    gw, env = media_gateway, postgres_env
    client = sdk_client(gw)
    # a size the price file does not list: served, $0 for it, partial
    client.images.generate(model="dall-e-3", prompt="x", size="256x256")
    log, _ = record_of(gw, env, 1)
    assert log["price_source"] == "override:partial" and cost(log) == 0
    # a model nobody prices: served, unknown
    client.audio.speech.create(model="tts-9-experimental", voice="alloy", input="hi")
    log, _ = record_of(gw, env, 2)
    assert log["price_source"] == "unknown" and cost(log) == 0
    # a transcription with no duration anywhere (not a WAV, text answer): partial
    client.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"ID3" + b"\x00" * 5000),
                                       response_format="text")
    log, _ = record_of(gw, env, 3)
    assert log["price_source"] == "override:partial" and log.get("usage_flag") == "missing"
    status, _, data = call(gw.url + "/metrics", token=gw.master_key)
    assert status == 200 and b"tallygate_unpriced_requests_total" in data


def test_upload_limits_and_bad_forms(gateway, postgres_env):
    gw = gateway(**postgres_env, TALLYGATE_MAX_FILE_BYTES="50000")
    client = sdk_client(gw)
    with pytest.raises(openai.APIStatusError) as err:
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav(3.0)))
    assert err.value.status_code == 413
    # a form with no model is a clear 400
    status, _, data = call(gw.base_url + "/audio/transcriptions", method="POST", token=gw.token,
                           body=b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n"
                           b"abc\r\n--b--\r\n", headers={"Content-Type": "multipart/form-data; boundary=b", "X-Tenant-ID": "acme"})
    assert status == 400 and b"model" in data
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="tts-1", voice="alloy", input="")


# -- the demo upstream's tool calls and JSON answers: the SDK helpers work through the gateway --

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}


def _models():
    from pydantic import BaseModel

    class Step(BaseModel):
        explanation: str
        output: int

    class Solution(BaseModel):
        steps: list[Step]
        final_answer: str
        confident: bool

    class GetWeather(BaseModel):
        city: str
        days: int

    return Solution, GetWeather


def test_chat_tool_calls_and_structured_outputs(gateway):
    import json

    gw = gateway()
    client = sdk_client(gw)
    Solution, GetWeather = _models()
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]

    answer = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["unit"] in ("c", "f")
    # the tool's result answered: text, the loop ends
    follow = messages + [choice.message.model_dump(exclude_none=True),
                         {"role": "tool", "tool_call_id": call.id, "content": "18 C"}]
    final = client.chat.completions.create(model="gpt-4o-mini", messages=follow, tools=[WEATHER_TOOL])
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.content
    # tool_choice "none": no call
    none = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL],
                                          tool_choice="none")
    assert none.choices[0].message.tool_calls is None

    # parse with a pydantic model (json_schema, strict): the parsed object
    parsed = client.chat.completions.parse(model="gpt-4o-mini", messages=messages, response_format=Solution)
    result = parsed.choices[0].message.parsed
    assert isinstance(result, Solution) and result.steps and isinstance(result.steps[0].output, int)
    # json_object: valid JSON content
    obj = client.chat.completions.create(model="gpt-4o-mini", messages=messages,
                                         response_format={"type": "json_object"})
    assert isinstance(json.loads(obj.choices[0].message.content), dict)

    # streamed: the helper assembles the tool call and parses its arguments
    with client.chat.completions.stream(model="gpt-4o-mini", messages=messages,
                                        tools=[openai.pydantic_function_tool(GetWeather)]) as stream:
        done = stream.get_final_completion()
    tool = done.choices[0].message.tool_calls[0]
    assert done.choices[0].finish_reason == "tool_calls"
    assert isinstance(tool.function.parsed_arguments, GetWeather)
    with client.chat.completions.stream(model="gpt-4o-mini", messages=messages, response_format=Solution) as stream:
        assert isinstance(stream.get_final_completion().choices[0].message.parsed, Solution)
    records = gw.wait_records(7)
    assert all(r["endpoint"] == "/v1/chat/completions" and Decimal(r["cost_usd_exact"]) > 0 for r in records)


def test_responses_function_calls_and_structured_outputs(gateway):
    import json

    gw = gateway()
    client = sdk_client(gw)
    Solution, GetWeather = _models()
    tool = {"type": "function", "name": "get_weather", "strict": True, **{
        k: v for k, v in WEATHER_TOOL["function"].items() if k in ("description", "parameters")}}

    answer = client.responses.create(model="gpt-4o-mini", input="Weather in Paris?", tools=[tool])
    call = answer.output[-1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert set(json.loads(call.arguments)) == {"city", "unit"}
    final = client.responses.create(model="gpt-4o-mini", tools=[tool], input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "18 C"}])
    assert final.output_text

    # the stream's events for a function call, and the helper's final response
    with client.responses.stream(model="gpt-4o-mini", input="Weather?", tools=[tool]) as stream:
        kinds = [e.type for e in stream]
        got = stream.get_final_response()
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    assert got.output[-1].type == "function_call" and json.loads(got.output[-1].arguments)["city"]

    # structured output: parse with a pydantic model, plain and streamed
    parsed = client.responses.parse(model="gpt-4o-mini", input="Solve 8x + 7 = -23", text_format=Solution)
    assert isinstance(parsed.output_parsed, Solution)
    with client.responses.stream(model="gpt-4o-mini", input="Solve it", text_format=Solution) as stream:
        assert isinstance(stream.get_final_response().output_parsed, Solution)
    # pydantic function tools through responses.parse: parsed arguments
    with_tool = client.responses.parse(model="gpt-4o-mini", input="Weather?",
                                       tools=[openai.pydantic_function_tool(GetWeather)])
    assert isinstance(with_tool.output[-1].parsed_arguments, GetWeather)


def test_worst_case_is_the_dearest_image_and_the_upload_bound(media_gateway, postgres_env):
    """A prepaid balance admits a request only when its worst case fits (spent + in flight +
    worst case within the credit): the worst case is what these endpoints reserve."""
    from support.tenants import new_key, unique

    gw = media_gateway
    tenant = unique("media")
    key = new_key(gw, tenant)["key"]
    status, _, doc = admin_call(gw.url + f"/admin/tenants/{tenant}/credits", "POST",
                                {"amount_usd": "0.30", "reference": "pay-1"})
    assert status == 201, doc
    client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    # 3 images of dall-e-3 may cost 3 x $0.12 (hd, tall): more than the credit, refused before
    # the upstream, although these three would cost $0.12
    with pytest.raises(openai.RateLimitError) as err:
        client.images.generate(model="dall-e-3", prompt="x", n=3)
    assert "worst case of $0.36" in err.value.message
    client.images.generate(model="dall-e-3", prompt="x", n=2)  # at most $0.24: admitted
    log, _ = record_of(gw, postgres_env, 1)
    assert cost(log) == 2 * Decimal("0.04")
    # whisper-1: an upload is reserved at its size over the lowest audio byte rate (750 B/s):
    # 1.9 MB could be 2,560 s = $0.256, more than the $0.22 left; a short file is admitted
    with pytest.raises(openai.RateLimitError) as err:
        client.audio.transcriptions.create(model="whisper-1", file=("long.wav", wav(60)))
    assert "worst case of $0.256" in err.value.message
    answer = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav(2.0)))
    assert answer.text == TRANSCRIPT
    # speech: its characters at the price file's rate
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0).audio.speech.create(
            model="tts-1", voice="alloy", input="x" * 16384)  # $0.25 of characters, $0.22 left


def test_form_scanner_reads_fields_split_anywhere():
    """The multipart scanner (routes/multipart.py) finds the same fields and file head however
    the body is cut into pieces, and never mistakes file bytes for a delimiter."""
    from tallygate.routes.multipart import FormScanner

    file_bytes = wav(0.01) + b"\r\n--notquite\r\n" + bytes(range(256)) * 4
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"response_format\"\r\n\r\nsrt\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            b"Content-Type: audio/wav\r\n\r\n" + file_bytes + b"\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"language\"\r\n\r\nen\r\n--XyZ--\r\n")
    for size in (1, 2, 3, 7, 64, 1000, len(body)):
        scanner = FormScanner(b"XyZ")
        for i in range(0, len(body), size):
            scanner.feed(body[i : i + size])
        assert scanner.fields == {"model": "whisper-1", "response_format": "srt", "language": "en"}, size
        assert scanner.files == 1 and scanner.state == "done", size
        assert scanner.file_head == file_bytes[:4096], size


def test_failed_media_requests_cost_nothing(media_gateway, postgres_env):
    gw, env = media_gateway, postgres_env
    client = sdk_client(gw)
    # the upstream refuses (sse speech for tts-1): a row at $0, not the characters
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="tts-1", voice="alloy", input="hello", stream_format="sse")
    log, row = record_of(gw, env, 1)
    assert log["status"] == "upstream_error" and row["status_code"] == 400 and cost(log) == 0

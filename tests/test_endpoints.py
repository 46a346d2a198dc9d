"""The stateful and free endpoints (routes/objects.py) through a real gateway and the fake
upstream, with the official SDK: each works, ids are isolated between tenants, uploads are
streamed under a size limit, and every call is a $0 ledger row with its endpoint."""

from __future__ import annotations

import io
import json
import os
import time

import openai
import pytest

from support import sdk_client
from support.http import admin_call, call
from support.ledger import pg_rows, sqlite_rows
from support.waiting import wait_until


def _rows(gw, tmp_path, env=None) -> list[dict]:
    if env is not None:
        return pg_rows(env)
    return sqlite_rows(tmp_path / "ledger.db")


def test_responses_by_id_and_tenant_isolation(gateway, tmp_path):
    gw = gateway()
    a, b = sdk_client(gw, "tenant-a"), sdk_client(gw, "tenant-b")
    created = a.responses.create(model="gpt-4o-mini", input="hello there")
    got = a.responses.retrieve(created.id)
    assert got.id == created.id and got.output_text == created.output_text
    items = a.responses.input_items.list(created.id)
    assert [i.content[0].text for i in items.data] == ["hello there"]
    # a streamed response is owned too (its id from the final event)
    with a.responses.stream(model="gpt-4o-mini", input="streamed") as stream:
        final = stream.get_final_response()
    assert a.responses.retrieve(final.id).id == final.id

    # tenant B, with the exact id: 404 everywhere, as for an id nobody created
    for fn in (b.responses.retrieve, b.responses.delete, b.responses.cancel, b.responses.input_items.list):
        with pytest.raises(openai.NotFoundError) as err:
            fn(created.id)
        assert err.value.response.json()["error"]["code"] == "not_found"
    with pytest.raises(openai.NotFoundError):
        a.responses.retrieve("resp_nobody_made_this")
    # B's attempts did not reach the upstream: A's response is still there
    assert a.responses.cancel(created.id).status == "cancelled"
    a.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):  # the upstream's own 404 now
        a.responses.retrieve(created.id)

    count = a.responses.input_tokens.count(model="gpt-4o-mini", input="count these tokens please")
    assert count.input_tokens > 0
    # a count over another tenant's stored response would read its context: refused
    with pytest.raises(openai.NotFoundError):
        b.responses.input_tokens.count(model="gpt-4o-mini", previous_response_id=final.id, input="x")

    def free_rows():
        return [r for r in _rows(gw, tmp_path) if r["endpoint"] != "/v1/responses"]

    # rows: retrieve x3 (2 ok, 1 upstream 404), input_items, cancel, delete, input_tokens
    rows = wait_until(lambda: r if len(r := free_rows()) >= 7 else None, message="7 free rows")
    assert sorted(r["endpoint"] for r in rows) == sorted(
        ["/v1/responses/{id}"] * 4 + ["/v1/responses/{id}/input_items", "/v1/responses/{id}/cancel",
                                      "/v1/responses/input_tokens"]
    )
    assert all(r["tenant_id"] == "tenant-a" for r in rows)  # B's refusals reached no upstream: no rows
    assert all(str(r["cost_usd"]) in ("0", "0E-12", "0.000000000000") or float(r["cost_usd"]) == 0 for r in rows)
    assert {r["price_source"] for r in rows} == {"free"}
    assert sorted(r["status_code"] for r in rows if r["endpoint"] == "/v1/responses/{id}") == [200, 200, 200, 404]


def test_conversations_and_items(gateway, tmp_path):
    gw = gateway()
    a, b = sdk_client(gw, "tenant-a"), sdk_client(gw, "tenant-b")
    conv = a.conversations.create(metadata={"topic": "demo"},
                                  items=[{"type": "message", "role": "user", "content": "first"}])
    assert conv.id.startswith("conv_") and conv.metadata == {"topic": "demo"}
    assert a.conversations.retrieve(conv.id).id == conv.id
    assert a.conversations.update(conv.id, metadata={"topic": "other"}).metadata == {"topic": "other"}
    added = a.conversations.items.create(conv.id, items=[{"type": "message", "role": "user", "content": "second"}])
    item_id = added.data[0].id
    listed = a.conversations.items.list(conv.id, order="asc")
    assert [i.content[0].text for i in listed.data] == ["first", "second"]
    assert a.conversations.items.retrieve(item_id, conversation_id=conv.id).id == item_id

    with pytest.raises(openai.NotFoundError):
        b.conversations.retrieve(conv.id)
    with pytest.raises(openai.NotFoundError):
        b.conversations.update(conv.id, metadata={"x": "y"})
    with pytest.raises(openai.NotFoundError):
        b.conversations.items.list(conv.id)
    with pytest.raises(openai.NotFoundError):
        b.conversations.items.retrieve(item_id, conversation_id=conv.id)
    with pytest.raises(openai.NotFoundError):
        b.conversations.items.delete(item_id, conversation_id=conv.id)
    with pytest.raises(openai.NotFoundError):
        b.conversations.delete(conv.id)

    assert a.conversations.items.delete(item_id, conversation_id=conv.id).id == conv.id
    assert a.conversations.delete(conv.id).deleted is True
    rows = wait_until(lambda: r if len(r := _rows(gw, tmp_path)) >= 8 else None, message="8 rows")
    assert {r["endpoint"] for r in rows} == {
        "/v1/conversations", "/v1/conversations/{id}", "/v1/conversations/{id}/items",
        "/v1/conversations/{id}/items/{item_id}"}
    assert all(r["tenant_id"] == "tenant-a" and r["price_source"] == "free" for r in rows)


def test_moderations_free_row(gateway, tmp_path):
    gw = gateway()
    result = sdk_client(gw, "mod-tenant").moderations.create(model="omni-moderation-latest", input=["a", "b"])
    assert len(result.results) == 2 and result.results[0].flagged is False
    rows = wait_until(lambda: _rows(gw, tmp_path) or None, message="a row")
    assert len(rows) == 1
    row = rows[0]
    assert (row["endpoint"], row["model"], row["tenant_id"], row["price_source"]) == (
        "/v1/moderations", "omni-moderation-latest", "mod-tenant", "free")
    assert float(row["cost_usd"]) == 0 and row["status_code"] == 200
    line = gw.wait_records(1)[0]
    assert line["endpoint"] == "/v1/moderations" and line["cost_usd_exact"] in ("0", "0.000000000000")
    # the usage report shows the free call in its own group
    status, _, report = admin_call(gw.url + "/admin/usage?tenant_id=mod-tenant&group_by=endpoint")
    assert status == 200, report
    assert [(g["endpoint"], g["requests"], g["cost_usd"]) for g in report["data"]] == [("/v1/moderations", 1, "0")]


def test_files_isolated_and_listed_per_tenant(gateway, tmp_path, postgres_env):
    gw = gateway(**postgres_env)
    a, b = sdk_client(gw, "files-a"), sdk_client(gw, "files-b")
    f = a.files.create(file=("notes.jsonl", io.BytesIO(b'{"x": 1}\n'), "application/jsonl"), purpose="batch")
    other = b.files.create(file=("b.jsonl", io.BytesIO(b'{"y": 2}\n')), purpose="batch")
    assert f.bytes == 9 and f.filename == "notes.jsonl"
    assert a.files.retrieve(f.id).id == f.id
    assert a.files.content(f.id).read() == b'{"x": 1}\n'
    # each tenant lists only its own files, though the upstream account holds both
    assert [x.id for x in a.files.list().data] == [f.id]
    assert [x.id for x in b.files.list().data] == [other.id]
    for fn in (b.files.retrieve, b.files.content, b.files.delete):
        with pytest.raises(openai.NotFoundError):
            fn(f.id)
    assert a.files.delete(f.id).deleted is True
    # the owner is in the database: a second gateway on it (an empty cache) knows it
    gw2 = gateway(**postgres_env)
    b2 = sdk_client(gw2, "files-b")
    assert b2.files.retrieve(other.id).id == other.id
    with pytest.raises(openai.NotFoundError):
        sdk_client(gw2, "files-a").files.retrieve(other.id)
    rows = wait_until(lambda: r if len(r := pg_rows(postgres_env, "tenant_id IN ('files-a', 'files-b')")) >= 8
                      else None, message="8 rows")
    assert {r["endpoint"] for r in rows} == {"/v1/files", "/v1/files/{id}", "/v1/files/{id}/content"}
    assert all(r["cost_usd"] == 0 for r in rows)


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_big_upload_streamed_and_limit(gateway, tmp_path):
    gw = gateway(TALLYGATE_MAX_FILE_BYTES=60 * 1024 * 1024)
    c = sdk_client(gw, "big", timeout=120)
    c.files.create(file=("warm.jsonl", io.BytesIO(b"{}\n")), purpose="batch")  # imports, pools warm
    path = tmp_path / "big.jsonl"
    with open(path, "wb") as fh:
        line = b'{"custom_id": "x", "body": "' + b"y" * 1000 + b'"}\n'
        for _ in range(50 * 1024 * 1024 // len(line)):
            fh.write(line)
    size = os.path.getsize(path)
    # the first big upload grows the server's buffers once (~10-15 MB, whatever the size);
    # the second must not grow it again: the file is passed on as it arrives
    grown = []
    for _ in range(2):
        before = _rss_kb(gw.proc.pid)
        started = time.monotonic()
        with open(path, "rb") as fh:
            up = c.files.create(file=("big.jsonl", fh), purpose="batch")
        took = time.monotonic() - started
        after = _rss_kb(gw.proc.pid)
        assert up.bytes == size  # the upstream got every byte
        grown.append((after - before) / 1024)
        print(f"upload of {size / 2**20:.1f} MiB in {took:.2f} s, gateway RSS {before / 1024:.1f} -> "
              f"{after / 1024:.1f} MiB")
    assert grown[0] < 25 and grown[1] < 4, f"gateway RSS grew {grown} MB for {size >> 20} MB uploads"

    # over the limit: 413 from the declared length, nothing reaches the upstream
    with open(path, "rb") as fh:
        data = fh.read(1024)
    small = gateway(TALLYGATE_MAX_FILE_BYTES=1000)
    with pytest.raises(openai.APIStatusError) as err:
        sdk_client(small, "big").files.create(file=("x.jsonl", io.BytesIO(data * 2)), purpose="batch")
    assert err.value.status_code == 413
    assert err.value.response.json()["error"]["code"] == "request_too_large"


def test_unknown_and_unauthenticated(gateway):
    gw = gateway()
    status, _, _ = call(f"{gw.base_url}/files", token="wrong", headers={"X-Tenant-ID": "t"})
    assert status == 401
    status, headers, _ = call(f"{gw.base_url}/moderations", token=gw.token, headers={"X-Tenant-ID": "t"})
    assert status == 405 and headers["allow"] == "POST"
    status, _, _ = call(f"{gw.base_url}/files/abc/nothing", token=gw.token, headers={"X-Tenant-ID": "t"})
    assert status == 404


def test_responses_continue_only_own_state(gateway, fake_upstream):
    gw = gateway()
    a, b = sdk_client(gw, "cont-a"), sdk_client(gw, "cont-b")
    first = a.responses.create(model="gpt-4o-mini", input="remember this")
    conv = a.conversations.create()
    assert a.responses.create(model="gpt-4o-mini", input="and then?", previous_response_id=first.id).id
    assert a.responses.create(model="gpt-4o-mini", input="in a conversation", conversation=conv.id).id
    fake_upstream.reset()
    # another tenant continuing A's response or conversation would read its context
    with pytest.raises(openai.NotFoundError):
        b.responses.create(model="gpt-4o-mini", input="what did A say?", previous_response_id=first.id)
    with pytest.raises(openai.NotFoundError):
        b.responses.create(model="gpt-4o-mini", input="what did A say?", conversation={"id": conv.id})
    with pytest.raises(openai.NotFoundError):
        list(b.responses.create(model="gpt-4o-mini", input="x", previous_response_id=first.id, stream=True))
    assert fake_upstream.requests() == []  # refused before any upstream call


def test_rpm_limit_counts_free_calls(gateway, tmp_path):
    from support.tenants import new_key, unique

    gw = gateway()
    tenant = unique("rpm")
    key = new_key(gw, tenant, rpm_limit=2)["key"]
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    if time.time() % 60 > 55:  # the rpm window is the clock minute: do not straddle two
        time.sleep(61 - time.time() % 60)
    c.moderations.create(input="one")
    c.files.list()
    with pytest.raises(openai.RateLimitError) as err:
        c.moderations.create(input="three")
    assert err.value.response.headers["x-ratelimit-limit-requests"] == "2"


def test_upload_without_length_cut_at_limit(gateway):
    """A chunked upload (no Content-Length) is counted as it streams: 413 past the limit."""
    import http.client

    gw = gateway(TALLYGATE_MAX_FILE_BYTES=100_000)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    boundary = "tgboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jsonl\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()

    def chunks():
        yield head
        for _ in range(50):
            yield b"z" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    conn.request("POST", "/v1/files", body=chunks(), encode_chunked=True,
                 headers={**gw.headers("chunky"), "Content-Type": f"multipart/form-data; boundary={boundary}",
                          "Transfer-Encoding": "chunked"})
    resp = conn.getresponse()
    assert resp.status == 413
    assert b"TALLYGATE_MAX_FILE_BYTES" in resp.read()
    # an upload under the limit, chunked, goes through whole
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)

    def small():
        yield head
        yield b"z" * 5_000
        yield f"\r\n--{boundary}--\r\n".encode()

    conn.request("POST", "/v1/files", body=small(), encode_chunked=True,
                 headers={**gw.headers("chunky"), "Content-Type": f"multipart/form-data; boundary={boundary}",
                          "Transfer-Encoding": "chunked"})
    resp = conn.getresponse()
    assert resp.status == 200
    import json

    assert json.loads(resp.read())["bytes"] == 5_000


def test_sync_ledger_row_before_answer(gateway, tmp_path):
    gw = gateway(TALLYGATE_LEDGER_MODE="sync")
    c = sdk_client(gw, "sync-tenant")
    conv = c.conversations.create()
    rows = sqlite_rows(tmp_path / "ledger.db")  # no waiting: the answer came after the commit
    assert [(r["endpoint"], r["tenant_id"], r["status_code"]) for r in rows] == [
        ("/v1/conversations", "sync-tenant", 200)]
    assert c.conversations.retrieve(conv.id).id == conv.id


def test_file_listing_pages_over_other_tenants_files(gateway):
    """The upstream lists the whole account's files; a tenant's pages skip the others' and
    the SDK's auto-paging still reaches every one of its own."""
    gw = gateway()
    a, b = sdk_client(gw, "page-a"), sdk_client(gw, "page-b")
    mine = []
    for i in range(5):
        mine.append(a.files.create(file=(f"a{i}.jsonl", io.BytesIO(b"{}\n")), purpose="batch").id)
        for j in range(3):
            b.files.create(file=(f"b{i}{j}.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
    first = a.files.list(limit=2)
    assert len(first.data) == 2 and first.has_more is True
    assert sorted(f.id for f in a.files.list(limit=2)) == sorted(mine)  # auto-paging: all 5, none of B's
    assert len(list(b.files.list(limit=4))) == 15


@pytest.mark.parametrize("path", ["/files", "/audio/transcriptions", "/images/edits"])
def test_every_upload_refuses_what_it_cannot_stream(gateway, fake_upstream, path):
    """The checks every streamed upload shares (routes/multipart.py check_upload), each a JSON
    error before anything reaches the upstream."""
    gw = gateway(TALLYGATE_MAX_FILE_BYTES=1000)
    fake_upstream.reset()
    tenant = {"X-Tenant-ID": "t"}
    form = "multipart/form-data; boundary=b"
    cases = [
        ({"Content-Type": form, "Content-Encoding": "gzip"}, b"--b--\r\n", 415, "unsupported_content_encoding"),
        ({"Content-Type": "application/json"}, b'{"model": "whisper-1"}', 400, "invalid_request"),
        ({"Content-Type": form}, b"x" * 1001, 413, "request_too_large"),
    ]
    if path != "/files":  # /v1/files passes the client's type on as it is: the upstream judges the boundary
        cases.append(({"Content-Type": "multipart/form-data"}, b"--b--\r\n", 400, "invalid_request"))
    for headers, body, status, code in cases:
        got, _, answer = call(f"{gw.base_url}{path}", "POST", body, token=gw.token, headers={**tenant, **headers})
        error = json.loads(answer)["error"]
        assert (got, error["code"]) == (status, code), (path, headers, answer)
        assert error["message"]
    assert fake_upstream.requests() == []

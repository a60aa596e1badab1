"""The application shell: health, OpenAPI coverage, problem documents for failures."""


async def test_health_reports_database_and_version(client, hub):
    resp = await client.get("/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok" and body["version"] == hub.version
    assert body["database"] == {"backend": hub.db.backend, "reachable": True}


async def test_every_route_is_in_the_openapi_document(client):
    spec = await (await client.get("/api/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    served = {(r.resource.canonical, r.method) for r in client.app.router.routes() if r.method != "HEAD"}
    missing = served - documented
    assert not missing, f"routes missing from OpenAPI: {sorted(missing)}"


async def test_internal_errors_never_leak_a_stack_trace(client, hub, monkeypatch):
    def explode(*_a, **_k):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(hub.admin, "list_head_ends", explode)
    resp = await client.get("/api/v1/head-ends")
    assert resp.status == 500 and resp.content_type == "application/problem+json"
    text = await resp.text()
    assert "secret internals" not in text and "Traceback" not in text

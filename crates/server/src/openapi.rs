//! `GET /openapi.json`: the service's OpenAPI 3.1 description, built here in
//! code beside the routes. A test requests every operation it lists against
//! the real router, so an operation described but not served fails the build.

use serde_json::{json, Value};

fn op(summary: &str, params: Value, body: Option<Value>, response: Value) -> Value {
    let mut o = json!({
        "summary": summary,
        "parameters": params,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": response}}},
            "400": {"$ref": "#/components/responses/Error"},
            "401": {"$ref": "#/components/responses/Error"},
            "429": {"$ref": "#/components/responses/Error"},
        },
    });
    if let Some(b) = body {
        o["requestBody"] = json!({"required": true, "content": b});
    }
    o
}

fn path_id(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
}

fn query(name: &str, ty: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": {"type": ty}, "description": description})
}

/// The description of every operation the router serves.
pub fn document() -> Value {
    let object = json!({"type": "object"});
    let search_params = json!([
        {"name": "q", "in": "query", "required": true, "schema": {"type": "string"}},
        query("top_k", "integer", "results (default search.top_k)"),
        query("collection", "string", "only this collection"),
        query("mode", "string", "hybrid, lexical, dense or sparse"),
        query("document_ids", "string", "comma-separated document ids"),
        query("rerank", "boolean", "rerank the results (default: rerank.mode is not off)"),
    ]);
    let search_body = json!({"application/json": {"schema": {"type": "object", "required": ["query"], "properties": {
        "query": {"type": "string"}, "top_k": {"type": "integer"}, "collection": {"type": "string"},
        "mode": {"type": "string", "enum": ["hybrid", "lexical", "dense", "sparse"]},
        "rerank": {"type": "boolean"},
        "filter": {"type": "object", "properties": {
            "document_ids": {"type": "array", "items": {"type": "string"}},
            "metadata": {"type": "object"}}}}}}});
    // Changes to every document's chunking plan (the analyzer chooses one per document).
    let plan_override = json!({"type": "object", "additionalProperties": false, "properties": {
        "strategy": {"type": "string", "enum": ["sections", "lines"]},
        "max_tokens": {"type": "integer", "minimum": 16}, "overlap_tokens": {"type": "integer", "minimum": 0},
        "keep_tables_whole": {"type": "boolean"}, "keep_code_whole": {"type": "boolean"}}});
    let ingest_body = json!({
        "application/json": {"schema": {"type": "object", "properties": {
            "text": {"type": "string"}, "title": {"type": "string"}, "id": {"type": "string"},
            "metadata": {"type": "object"}, "collection": {"type": "string"},
            "documents": {"type": "array", "items": {"type": "object"}},
            "plan": plan_override.clone()}}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
            "collection": {"type": "string"},
            "plan": {"type": "string", "description": "the `plan` object as JSON"}}}},
    });
    let texts = json!({"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "DataFactory", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Document ingestion and retrieval for RAG. Shapes as in README.md (JSON output)."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "An error", "content": {"application/json": {"schema":
                {"type": "object", "properties": {"error": {"type": "string"}}}}}}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/health": {"get": op("Alive", json!([]), None, object.clone())},
            "/ready": {"get": op("Store, model, reranker and LLM endpoint state", json!([]), None, object.clone())},
            "/metrics": {"get": op("Prometheus metrics (text): requests, ingest, LLM tokens per endpoint, phases, embedder", json!([]), None, json!({"type": "string"}))},
            "/openapi.json": {"get": op("This document", json!([]), None, object.clone())},
            "/ingest": {"post": op(
                "Ingest uploaded files or JSON documents as a job (202, or 200 with wait=true)",
                json!([query("wait", "boolean", "answer when the job ends"), query("collection", "string", "collection")]),
                Some(ingest_body), object.clone())},
            "/jobs/{id}": {"get": op("A job: state, files, phases, summary", json!([path_id("id")]), None, object.clone())},
            "/jobs/{id}/events": {"get": op("The job as Server-Sent Events (progress, then done)",
                json!([path_id("id")]), None, json!({"type": "string"}))},
            "/search": {
                "get": op("Search", search_params, None, object.clone()),
                "post": op("Search, with filters", json!([]), Some(search_body), object.clone()),
            },
            "/documents": {"get": op("Documents", json!([query("collection", "string", "only this collection")]), None,
                json!({"type": "array", "items": {"type": "object"}}))},
            "/documents/{id}": {
                "get": op("A document with its chunks", json!([path_id("id")]), None, object.clone()),
                "delete": op("Remove a document everywhere", json!([path_id("id")]), None, object.clone()),
            },
            "/v1/embeddings": {"post": op("OpenAI-compatible embeddings", json!([]),
                Some(json!({"application/json": {"schema": {"type": "object", "required": ["input"], "properties": {
                    "input": texts, "model": {"type": "string"},
                    "encoding_format": {"type": "string", "enum": ["float", "base64"]}}}}})), object.clone())},
            "/embed": {"post": op("text-embeddings-inference-compatible embeddings", json!([]),
                Some(json!({"application/json": {"schema": {"type": "object", "required": ["inputs"],
                    "properties": {"inputs": texts}}}})),
                json!({"type": "array", "items": {"type": "array", "items": {"type": "number"}}}))},
        },
    })
}

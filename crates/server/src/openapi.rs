//! `GET /openapi.json`: the service's OpenAPI 3.1 description, generated
//! from the code. Each handler in `routes.rs` carries its operation
//! (`#[utoipa::path]`: parameters, request body, responses), each request
//! and response type its schema (`#[derive(ToSchema)]`, down to the store's
//! records), and the router registers handler and operation together
//! (`utoipa_axum::routes!`), so a route cannot be served undescribed or
//! described unserved. This module adds what is common to every operation:
//! the bearer key and the answers of the shared guard (401, 408, 413, 429).

use serde_json::Value;
use std::sync::OnceLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr, ResponseBuilder};

/// The document's frame: info, the bearer scheme, the shared error answer.
pub(crate) fn base() -> OpenApi {
    let error = ResponseBuilder::new()
        .description("An error: `{\"error\": \"...\"}`")
        .content(
            "application/json",
            utoipa::openapi::ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
        )
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("DataFactory")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Document ingestion and retrieval for RAG: ingest jobs, search, documents, \
                     OpenAI- and TEI-compatible embeddings.",
                ))
                .build(),
        )
        .components(Some(
            ComponentsBuilder::new()
                .security_scheme(
                    "bearer",
                    SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
                )
                .response("Error", error)
                .build(),
        ))
        .security(Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]))
        .build()
}

/// The answers the guard (`limits.rs`) can give on every route, besides the
/// handler's own: a missing or wrong key (where keys are set), a request
/// past its time, a body too large, too many requests at once.
fn add_guard_answers(api: &mut OpenApi) {
    for item in api.paths.paths.values_mut() {
        for op in [&mut item.get, &mut item.post, &mut item.delete].into_iter().flatten() {
            let public = op.security.as_ref().is_some_and(|s| s.iter().all(|r| r == &Default::default()));
            let mut codes = vec!["408", "413", "429"];
            if !public {
                codes.push("401");
            }
            for code in codes {
                op.responses
                    .responses
                    .entry(code.to_string())
                    .or_insert_with(|| RefOr::Ref(Ref::from_response_name("Error")));
            }
        }
    }
}

/// The description of every operation the router serves, as JSON.
pub fn document() -> Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut api = crate::routes::api_routes().into_openapi();
        add_guard_answers(&mut api);
        serde_json::to_value(&api).expect("the OpenAPI document serialises")
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    /// Every `$ref` points at a component the document has; every operation
    /// but `/health` needs the key and can answer 401.
    #[test]
    fn references_resolve_and_keys_are_described() {
        let doc = super::document();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 30);
        for r in found {
            let pointer = r.strip_prefix('#').expect("local reference");
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let public = op["security"] == serde_json::json!([{}]);
                assert_eq!(public, path == "/health", "{method} {path}");
                assert_eq!(op["responses"]["401"].is_object(), !public, "{method} {path}");
                assert!(op["responses"]["429"].is_object(), "{method} {path}");
            }
        }
    }
}

//! The OpenAPI document served at `/1/docs/spec`, derived from the request and
//! response types (`luna_core::api`) and the handlers' annotations, so that it
//! cannot drift from them; and the error table, generated from
//! `luna_core::ErrorCode`, in the document (`x-error-codes`) and as the page
//! `/1/docs/errors`, where the `link` of every error body points.

use luna_core::api::error_link;
use luna_core::ErrorCode;
use serde_json::json;
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::{Content, ObjectBuilder, OpenApi as Document, RefOr, Required, Type};
use utoipa::{Modify, OpenApi};

use super::errors::status;
use super::handlers as h;

#[derive(OpenApi)]
#[openapi(
    info(title = "luna-matcher", description = "The HTTP API of LUNA PLATFORM 5's Python Matcher. Bodies are JSON or, by Content-Type and Accept, \
msgpack (binary fields as raw bytes). Every error answers a stable error_code: see x-error-codes and /1/docs/errors."),
    paths(
        h::healthcheck, h::plugins, h::version, h::spec, h::metrics,
        h::create_list, h::get_list, h::delete_list, h::patch_list_faces,
        h::create_face, h::create_faces, h::get_face, h::delete_face,
        h::match_faces, h::match_raw, h::cache, h::subrequests,
    ),
    modifiers(&Conventions),
)]
struct ApiDoc;

/// What every operation shares: the `Luna-Request-Id` header, and msgpack
/// beside JSON for every body but errors.
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, doc: &mut Document) {
        for item in doc.paths.paths.values_mut() {
            let writes = [&mut item.post, &mut item.patch, &mut item.delete];
            for op in writes.into_iter().flatten().filter(|op| is_store_write(op)) {
                answers_position(op);
            }
            let operations = [&mut item.get, &mut item.post, &mut item.patch, &mut item.delete];
            for op in operations.into_iter().flatten() {
                conventions(op);
            }
        }
    }
}

/// A write to the candidate store: its answer names the store position it committed at.
fn is_store_write(op: &Operation) -> bool {
    op.tags.iter().flatten().any(|t| t == "lists" || t == "faces")
}

fn answers_position(op: &mut Operation) {
    for (_, response) in op.responses.responses.iter_mut().filter(|(status, _)| status.starts_with('2')) {
        if let RefOr::T(r) = response {
            let mut position = Header::new(ObjectBuilder::new().schema_type(Type::String).pattern(Some("^[0-9]+:[0-9]+$")));
            position.description = Some("With the shared store: the change-log position this write committed at (`<xid>:<seq>`)".into());
            r.headers.insert("Luna-Store-Position".into(), position);
        }
    }
}

const JSON: &str = "application/json";
const MSGPACK: &str = "application/msgpack";

/// `Luna-Request-Id`: `<unix seconds>,<uuid4>`.
fn request_id_schema() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).pattern(Some("^[0-9]{10},[0-9a-f-]{36}$")).min_length(Some(47)).max_length(Some(47))
}

fn conventions(op: &mut Operation) {
    let request_id = ParameterBuilder::new()
        .name("Luna-Request-Id")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some("Made when absent; a malformed one is error 11005"))
        .schema(Some(request_id_schema()))
        .build();
    op.parameters.get_or_insert_with(Vec::new).push(request_id);
    for response in op.responses.responses.values_mut() {
        if let RefOr::T(r) = response {
            let mut echoed = Header::new(request_id_schema());
            echoed.description = Some("The request's id, given or made".into());
            r.headers.insert("Luna-Request-Id".into(), echoed);
        }
    }
    if let Some(body) = op.request_body.as_mut() {
        let msgpack = msgpack_of(body.content.get(JSON));
        body.content.extend(msgpack);
    }
    // Error bodies are always JSON.
    for (_, response) in op.responses.responses.iter_mut().filter(|(status, _)| *status != "default") {
        if let RefOr::T(r) = response {
            let msgpack = msgpack_of(r.content.get(JSON));
            r.content.extend(msgpack);
        }
    }
}

/// A JSON body is also accepted, or answered, as msgpack.
fn msgpack_of(json: Option<&Content>) -> Option<(String, Content)> {
    json.map(|json| (MSGPACK.to_owned(), Content::new(json.schema.clone())))
}

/// The document, with the error table.
pub fn document() -> Document {
    let mut doc = ApiDoc::openapi();
    let codes: Vec<_> =
        ErrorCode::ALL.iter().map(|c| json!({"error_code": c.code(), "status": status(*c).as_u16(), "desc": c.desc(), "link": error_link(c.code())})).collect();
    doc.extensions.get_or_insert_with(Extensions::default).insert("x-error-codes".into(), json!(codes));
    doc
}

/// The path templates of the document: what plugin routes may not take.
pub fn paths() -> Vec<String> {
    ApiDoc::openapi().paths.paths.into_keys().chain(["/1/docs/errors".to_owned()]).collect()
}

/// The error table as an HTML page with an anchor per code (`#error-11002`).
pub fn errors_page() -> String {
    let rows: String = ErrorCode::ALL
        .iter()
        .map(|c| {
            format!("<tr id=\"error-{0}\"><td><a href=\"#error-{0}\">{0}</a></td><td>{1}</td><td>{2}</td></tr>\n", c.code(), status(*c).as_u16(), c.desc())
        })
        .collect();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>luna-matcher error codes</title></head><body>\n\
<h1>luna-matcher error codes</h1>\n<p>Every error response carries <code>error_code</code>, <code>desc</code>, <code>detail</code> and \
<code>link</code>. Codes are stable.</p>\n<table>\n<tr><th>code</th><th>status</th><th>meaning</th></tr>\n{rows}</table>\n</body></html>\n"
    )
}

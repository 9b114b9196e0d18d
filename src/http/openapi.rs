//! The OpenAPI document served at `/1/docs/spec`, with the error table
//! generated from `luna_core::ErrorCode` so the two cannot drift apart.

use luna_core::ErrorCode;
use serde_json::{json, Value};

use super::errors::status;

fn body(schema: &str) -> Value {
    json!({"required": true, "content": {
        "application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}},
        "application/msgpack": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn reply(code: &str, description: &str) -> Value {
    json!({code: {"description": description}, "default": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}})
}

fn op(summary: &str, request: Option<&str>, code: &str, description: &str) -> Value {
    let mut o = json!({"summary": summary, "parameters": [
        {"name": "Luna-Request-Id", "in": "header", "required": false, "schema": {"type": "string", "pattern": "^[0-9]{10},[0-9a-f-]{36}$"}},
        {"name": "account_id", "in": "query", "required": false, "schema": {"type": "string", "format": "uuid"}}],
        "responses": reply(code, description)});
    if let Some(r) = request {
        o["requestBody"] = body(r);
    }
    o
}

/// Every documented path, also used by the tests to check each one is routed.
pub const PATHS: [&str; 14] = [
    "/healthcheck",
    "/1/plugins",
    "/1/version",
    "/1/docs/spec",
    "/metrics",
    "/1/lists",
    "/1/lists/{list_id}",
    "/1/lists/{list_id}/faces",
    "/1/faces",
    "/1/faces/bulk",
    "/1/faces/{face_id}",
    "/1/matcher/faces",
    "/1/matcher/raw",
    "/1/matcher/cache",
];

pub fn document() -> Value {
    let errors: Vec<Value> = ErrorCode::ALL.iter().map(|c| json!({"error_code": c.code(), "status": status(*c).as_u16(), "desc": c.desc()})).collect();
    let paths = json!({
        PATHS[0]: {"get": op("Health of the service, its store and plugins", None, "200", "healthy")},
        PATHS[1]: {"get": op("Every configured plugin: kind, class, state, restarts, last error, calls, latency, dropped events", None, "200", "plugins")},
        PATHS[2]: {"get": op("Service version", None, "200", "version")},
        PATHS[3]: {"get": op("This document", None, "200", "OpenAPI document")},
        PATHS[4]: {"get": op("Prometheus metrics", None, "200", "text exposition")},
        PATHS[5]: {"post": op("Create a list", Some("NewList"), "201", "list_id and url")},
        PATHS[6]: {"get": op("Read a list with its face_count", None, "200", "the list"),
                    "delete": op("Delete a list; its faces stay", None, "204", "deleted")},
        PATHS[7]: {"patch": op("Attach faces to or detach them from a list", Some("ListFacesPatch"), "204", "done")},
        PATHS[8]: {"post": op("Create a face", Some("NewFace"), "201", "face_id and url")},
        PATHS[9]: {"post": op("Create many faces in one transaction: all or nothing", Some("NewFaces"), "201", "face_ids in input order")},
        PATHS[10]: {"get": op("Read a face", None, "200", "the face"), "delete": op("Delete a face", None, "204", "deleted")},
        PATHS[11]: {"post": op("Match references against faces of the store; a Luna-Store-Position header (or store_position parameter) waits until that write of a shared store is applied", Some("MatchFaces"), "200", "one element per reference")},
        PATHS[12]: {"post": op("Match descriptors against descriptors", Some("MatchRaw"), "200", "one element per reference")},
        PATHS[13]: {"get": op("What this instance matches from: backend, cached lists, readiness, applied store position, faces", None, "200", "the cache report")},
    });
    let descriptor = json!({"type": "object", "required": ["data"], "properties": {
        "data": {"type": "string", "format": "byte", "description": "SDK container (dp\\0\\0 + u32 LE version + payload) or raw payload"},
        "version": {"type": "integer"}}});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "luna-matcher", "version": env!("CARGO_PKG_VERSION"),
                 "description": "LUNA PLATFORM 5 Python Matcher compatible API. Errors carry a stable error_code from x-error-codes."},
        "paths": paths,
        "components": {"schemas": {
            "Error": {"type": "object", "properties": {"error_code": {"type": "integer"}, "desc": {"type": "string"}, "detail": {"type": "string"}, "link": {"type": "string"}}},
            "NewList": {"type": "object", "required": ["account_id"], "properties": {"account_id": {"type": "string", "format": "uuid"}, "user_data": {"type": "string"}}},
            "ListFacesPatch": {"type": "object", "required": ["action", "face_ids"], "properties": {"action": {"enum": ["attach", "detach"]}, "face_ids": {"type": "array", "items": {"type": "string", "format": "uuid"}}}},
            "NewFace": {"type": "object", "required": ["account_id", "descriptor"], "properties": {
                "account_id": {"type": "string", "format": "uuid"}, "descriptor": descriptor,
                "external_id": {"type": "string"}, "user_data": {"type": "string"}, "lists": {"type": "array", "items": {"type": "string", "format": "uuid"}}}},
            "NewFaces": {"type": "array", "items": {"$ref": "#/components/schemas/NewFace"}},
            "MatchFaces": {"type": "object", "required": ["references", "candidates"], "properties": {
                "references": {"type": "array", "items": {"type": "object", "required": ["type"], "properties": {
                    "type": {"enum": ["descriptor", "face"]}, "id": {"type": "string"}, "data": {"type": "string", "format": "byte"}, "descriptor_version": {"type": "integer"}}}},
                "candidates": {"type": "array", "items": {"type": "object", "required": ["filters"], "properties": {
                    "filters": {"type": "object", "required": ["origin"], "properties": {
                        "origin": {"enum": ["faces"]}, "list_id": {"type": "string", "format": "uuid"}, "account_id": {"type": "string", "format": "uuid"},
                        "face_ids": {"type": "array", "items": {"type": "string"}}, "external_ids": {"type": "array", "items": {"type": "string"}},
                        "user_data": {"type": "string"}, "create_time__gte": {"type": "string", "format": "date-time"}, "create_time__lt": {"type": "string", "format": "date-time"},
                        "face_id__gte": {"type": "string", "format": "uuid"}, "face_id__lt": {"type": "string", "format": "uuid"}}},
                    "targets": {"type": "array", "items": {"enum": ["face_id", "similarity", "user_data", "external_id", "create_time", "account_id", "lists"]}},
                    "limit": {"type": "integer", "minimum": 0}, "threshold": {"type": "number"}}}}}},
            "MatchRaw": {"type": "object", "required": ["references", "candidates"], "properties": {
                "references": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "string"}, "data": {"type": "string", "format": "byte"}}}},
                "candidates": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "string"}, "data": {"type": "string", "format": "byte"}}}},
                "descriptor_version": {"type": "integer"}, "limit": {"type": "integer"}, "threshold": {"type": "number"}}}
        }},
        "x-error-codes": errors,
    })
}

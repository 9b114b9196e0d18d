//! The HTTP side of both tools: one reqwest client (a keep-alive pool) per
//! runtime, and the few calls of the API they make. Any service that speaks
//! the API will do: this one in any role, or LUNA's own.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE, DATE};
use serde::Deserialize;
use uuid::Uuid;

pub const JSON: &str = "application/json";
pub const MSGPACK: &str = "application/msgpack";

/// Why a call did not succeed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The service answered 4xx: it refused the request and stored nothing.
    Refused { status: u16, code: Option<u32>, detail: String },
    /// No answer, or 5xx: the request may or may not have taken effect.
    Unknown(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused { status, code: Some(code), detail } => write!(f, "HTTP {status}, error {code}: {detail}"),
            Failure::Refused { status, code: None, detail } => write!(f, "HTTP {status}: {detail}"),
            Failure::Unknown(e) => f.write_str(e),
        }
    }
}

/// A response of any status.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    /// The `Date` header, as RFC 3339: the service's clock.
    pub date: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: Option<u32>,
    detail: Option<String>,
    desc: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ListInfo {
    pub account_id: Uuid,
    pub face_count: u64,
}

#[derive(Deserialize)]
struct CreatedList {
    list_id: Uuid,
}

#[derive(Deserialize)]
struct CreatedFaces {
    face_ids: Vec<Uuid>,
}

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    pub fn new(url: &str, timeout: Duration) -> Result<Api, String> {
        let base = Self::base(url)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .timeout(timeout)
            .pool_max_idle_per_host(usize::MAX)
            // A bulk write is not idempotent: the importer decides what to resend.
            .retry(reqwest::retry::never())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Api { http, base })
    }

    /// The same client (and connection pool) for another service.
    pub fn at(&self, url: &str) -> Result<Api, String> {
        Ok(Api { http: self.http.clone(), base: Self::base(url)? })
    }

    fn base(url: &str) -> Result<String, String> {
        let base = url.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            return Err(format!("--url {url}: give an http:// address, e.g. http://127.0.0.1:5100"));
        }
        Ok(base)
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// POST a body; any status is an answer, only a transport error is not.
    pub async fn post(&self, path: &str, content_type: &'static str, body: Bytes) -> Result<Answer, String> {
        let request = self.http.post(format!("{}{path}", self.base)).header(CONTENT_TYPE, content_type).header(ACCEPT, JSON).body(body);
        answer(request.send().await).await
    }

    pub async fn get(&self, path: &str) -> Result<Answer, String> {
        answer(self.http.get(format!("{}{path}", self.base)).header(ACCEPT, JSON).send().await).await
    }

    pub async fn create_list(&self, account_id: Uuid, user_data: &str) -> Result<(Uuid, Option<String>), Failure> {
        let body = serde_json::to_vec(&serde_json::json!({"account_id": account_id, "user_data": user_data})).expect("JSON");
        let answer = success(self.post("/1/lists", JSON, body.into()).await)?;
        Ok((parse::<CreatedList>(&answer.body)?.list_id, answer.date))
    }

    /// A list's account and size; None when the service does not have it.
    pub async fn list(&self, list_id: Uuid) -> Result<Option<(ListInfo, Option<String>)>, Failure> {
        match success(self.get(&format!("/1/lists/{list_id}")).await) {
            Ok(answer) => Ok(Some((parse(&answer.body)?, answer.date))),
            Err(Failure::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /1/faces/bulk`: the new faces' ids, in input order.
    pub async fn bulk(&self, body: Bytes, msgpack: bool) -> Result<Vec<Uuid>, Failure> {
        let answer = success(self.post("/1/faces/bulk", if msgpack { MSGPACK } else { JSON }, body).await)?;
        Ok(parse::<CreatedFaces>(&answer.body)?.face_ids)
    }

    /// `POST /1/matcher/faces` with a JSON body; the JSON answer.
    pub async fn match_faces(&self, body: Vec<u8>) -> Result<Bytes, Failure> {
        Ok(success(self.post("/1/matcher/faces", JSON, body.into()).await)?.body)
    }
}

async fn answer(sent: reqwest::Result<reqwest::Response>) -> Result<Answer, String> {
    let response = sent.map_err(describe)?;
    let status = response.status().as_u16();
    let date = response.headers().get(DATE).and_then(|d| d.to_str().ok()).and_then(rfc3339);
    let body = response.bytes().await.map_err(describe)?;
    Ok(Answer { status, body, date })
}

/// reqwest's message and its causes: "error sending request" alone says little.
fn describe(e: reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// A 2xx answer, or why not.
pub fn success(answer: Result<Answer, String>) -> Result<Answer, Failure> {
    let answer = answer.map_err(Failure::Unknown)?;
    match answer.status {
        200..=299 => Ok(answer),
        status @ 400..=499 => {
            let body: Option<ErrorBody> = serde_json::from_slice(&answer.body).ok();
            let code = body.as_ref().and_then(|b| b.error_code);
            let detail =
                body.and_then(|b| b.detail.or(b.desc)).unwrap_or_else(|| String::from_utf8_lossy(&answer.body[..answer.body.len().min(300)]).into_owned());
            Err(Failure::Refused { status, code, detail })
        }
        status => Err(Failure::Unknown(format!("HTTP {status}: {}", String::from_utf8_lossy(&answer.body[..answer.body.len().min(300)])))),
    }
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| Failure::Unknown(format!("unexpected answer ({e}): {}", String::from_utf8_lossy(&body[..body.len().min(300)]))))
}

/// An HTTP date ("Sun, 30 Nov 2025 03:26:00 GMT") as RFC 3339.
fn rfc3339(http_date: &str) -> Option<String> {
    chrono::DateTime::parse_from_rfc2822(http_date).ok().map(|t| t.to_utc().to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_date_becomes_rfc3339() {
        assert_eq!(super::rfc3339("Sun, 30 Nov 2025 03:26:07 GMT").as_deref(), Some("2025-11-30T03:26:07Z"));
        assert_eq!(super::rfc3339("yesterday"), None);
    }
}

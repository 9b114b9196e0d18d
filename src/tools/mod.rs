//! `luna-matcher import` and `luna-matcher bench`: clients of the HTTP API,
//! so they work against any service that speaks it. They run on a tokio
//! runtime of their own, never on the actix server's threads.

pub mod bench;
pub mod client;
pub mod exact;
pub mod import;
pub mod imported;
pub mod input;
pub mod journal;
pub mod load;
pub mod report;
pub mod synthetic;
pub mod workload;

/// The tools' runtime: one per command, with the HTTP client's pool on it.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

/// The items in first-seen order, each once.
fn unique<T: PartialEq>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    items.into_iter().fold(Vec::new(), |mut seen, item| {
        if !seen.contains(&item) {
            seen.push(item);
        }
        seen
    })
}

/// Binary data as JSON carries it.
fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

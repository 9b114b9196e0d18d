//! Log output: human-readable by default, one JSON object a line with
//! `--log-format json`. The level comes from `RUST_LOG` (default `info`).
//! Structured fields of a record (the access log's request id, method, path,
//! status, error code and duration) are fields of the JSON object, and
//! `key=value` pairs after the message in text.

use std::io::Write;

use log::kv::{Error, Key, Value, VisitSource};
use serde_json::{Map, Value as Json};

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let mut line = Map::new();
            line.insert("time".into(), buf.timestamp_micros().to_string().into());
            line.insert("level".into(), record.level().as_str().into());
            line.insert("target".into(), record.target().into());
            line.insert("message".into(), record.args().to_string().into());
            // A field never replaces one of the four above.
            let _ = record.key_values().visit(&mut Fields(&mut line));
            writeln!(buf, "{}", Json::Object(line))
        });
    }
    builder.init();
}

struct Fields<'a>(&'a mut Map<String, Json>);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), Error> {
        let value = if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(x) = value.to_f64() {
            x.into()
        } else if let Some(b) = value.to_bool() {
            b.into()
        } else {
            value.to_string().into()
        };
        self.0.entry(key.as_str()).or_insert(value);
        Ok(())
    }
}

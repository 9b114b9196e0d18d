//! Log output: human-readable by default, one JSON object a line with
//! `--log-format json`. The level comes from `RUST_LOG` (default `info`).

use std::io::Write;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let line = serde_json::json!({
                "time": buf.timestamp_micros().to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "message": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    builder.init();
}

//! The `[plugins]` configuration, and durations as config values.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The `[plugins]` section of the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// One module `name.py` or package `name/` per plugin.
    pub directory: PathBuf,
    /// The plugins' virtual environment (empty: `VIRTUAL_ENV` if set, else the
    /// embedded interpreter's own site-packages).
    pub venv: PathBuf,
    /// Plugins the `matcher` role loads (LUNA's name).
    #[serde(rename = "LUNA_PYTHON_MATCHER_ACTIVE_PLUGINS")]
    pub matcher_active: Vec<String>,
    /// Plugins the `proxy` and `standalone` roles load (LUNA's name).
    #[serde(rename = "LUNA_MATCHER_PROXY_ACTIVE_PLUGINS")]
    pub proxy_active: Vec<String>,
    /// Plugins without which `/healthcheck` answers 502.
    pub required: Vec<String>,
    /// Events waiting per plugin; beyond it the oldest are dropped and counted.
    pub queue_size: usize,
    /// Longest an event handler or a plugin route may take (the plugin's own
    /// time: time other plugins hold the event loop is not counted), and
    /// longest plugin code may hold the event loop.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Longest a matching plugin's `getMatchingCost` (all the sub-requests of
    /// a request) or `match` may take: a request waits for a plugin that hangs
    /// only this long before the default matcher answers.
    #[serde(with = "duration")]
    pub matching_timeout: Duration,
    /// Longest `initialize()` may take.
    #[serde(with = "duration")]
    pub init_timeout: Duration,
    /// Longest `close()` may take at shutdown.
    #[serde(with = "duration")]
    pub close_timeout: Duration,
    /// Restarts within `restart_window` after which a plugin is `failed`.
    pub max_restarts: u32,
    /// The window `max_restarts` counts restarts in.
    #[serde(with = "duration")]
    pub restart_window: Duration,
    /// First restart delay; it doubles with each restart up to `backoff_max`.
    #[serde(with = "duration")]
    pub backoff_initial: Duration,
    /// Longest restart delay.
    #[serde(with = "duration")]
    pub backoff_max: Duration,
    /// The default matcher's cost: a matching plugin takes a sub-request only
    /// when it states a lower one.
    pub default_matcher_cost: f64,
    /// Each plugin's own table, handed to it as `app.ctx.config`. `timeout`,
    /// `matching_timeout` and `max_restarts` in it override the values above
    /// for that plugin.
    pub config: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            directory: "plugins".into(),
            venv: PathBuf::new(),
            matcher_active: Vec::new(),
            proxy_active: Vec::new(),
            required: Vec::new(),
            queue_size: 1000,
            timeout: Duration::from_secs(5),
            matching_timeout: Duration::from_secs(1),
            init_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(5),
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            default_matcher_cost: 100.0,
            config: BTreeMap::new(),
        }
    }
}

impl PluginsConfig {
    /// Check every active name: a Python identifier, listed once.
    pub fn validate(&self) -> Result<(), String> {
        for (key, names) in [("LUNA_PYTHON_MATCHER_ACTIVE_PLUGINS", &self.matcher_active), ("LUNA_MATCHER_PROXY_ACTIVE_PLUGINS", &self.proxy_active)] {
            for (i, name) in names.iter().enumerate() {
                if !is_identifier(name) {
                    return Err(format!("config key plugins.{key}: '{name}' is not a Python identifier"));
                }
                if names[..i].contains(name) {
                    return Err(format!("config key plugins.{key}: '{name}' is listed twice"));
                }
            }
        }
        for (name, table) in &self.config {
            for key in ["timeout", "matching_timeout"] {
                if let Some(t) = table.get(key) {
                    t.as_str()
                        .ok_or("a duration such as \"500ms\"".to_string())
                        .and_then(duration::parse)
                        .map_err(|e| format!("config key plugins.config.{name}.{key}: {e}"))?;
                }
            }
            if let Some(m) = table.get("max_restarts") {
                m.as_u64().ok_or_else(|| format!("config key plugins.config.{name}.max_restarts: a whole number"))?;
            }
        }
        Ok(())
    }

    /// The settings one plugin runs with.
    pub fn settings(&self, name: &str) -> PluginSettings {
        let own = self.config.get(name).cloned().unwrap_or_default();
        let own_duration = |key: &str| own.get(key).and_then(|t| t.as_str()).and_then(|t| duration::parse(t).ok());
        PluginSettings {
            timeout: own_duration("timeout").unwrap_or(self.timeout),
            matching_timeout: own_duration("matching_timeout").unwrap_or(self.matching_timeout),
            max_restarts: own.get("max_restarts").and_then(|m| m.as_u64()).map_or(self.max_restarts, |m| m as u32),
            init_timeout: self.init_timeout,
            close_timeout: self.close_timeout,
            restart_window: self.restart_window,
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max,
            config_json: serde_json::Value::Object(own).to_string(),
        }
    }
}

/// What one plugin's actor runs with.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// Longest an event handler or a route may take (the plugin's own time).
    pub timeout: Duration,
    /// Deadline of `getMatchingCost` and `match`.
    pub matching_timeout: Duration,
    /// Longest `initialize()` may take.
    pub init_timeout: Duration,
    /// Longest `close()` may take at shutdown.
    pub close_timeout: Duration,
    /// Restarts within `restart_window` after which the plugin is `failed`.
    pub max_restarts: u32,
    /// The window `max_restarts` counts restarts in.
    pub restart_window: Duration,
    /// First restart delay; it doubles with each restart within the window.
    pub backoff_initial: Duration,
    /// Longest restart delay.
    pub backoff_max: Duration,
    /// The plugin's own table as JSON, for `app.ctx.config`.
    pub config_json: String,
}

/// A Python identifier in the ASCII range, which is what a module file name needs.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Durations as `"500ms"`, `"5s"`, `"2m"`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    /// Read `500ms`, `5s` or `2m`; a number without a unit is refused.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let bad = || format!("'{text}' is not a duration such as 500ms, 5s or 2m");
        let n: f64 = number.parse().map_err(|_| bad())?;
        let seconds = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            _ => return Err(bad()),
        };
        Ok(Duration::from_secs_f64(seconds))
    }

    /// Write a duration as whole milliseconds, `"500ms"`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }

    /// Read a duration from text with a unit; a bare number is an error that says how to write it.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(Text)
    }

    /// A duration is text with a unit; a bare number says how to write it.
    struct Text;

    impl serde::de::Visitor<'_> for Text {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a duration such as \"500ms\", \"5s\" or \"2m\"")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            parse(v).map_err(E::custom)
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            Err(E::custom(format!("{v} has no unit: write a duration as text with one, such as \"{v}s\" or \"{v}ms\"")))
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            self.visit_i64(v as i64)
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
            Err(E::custom(format!("{v} has no unit: write a duration as text with one, such as \"{v}s\"")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_identifiers() {
        for bad in ["../x", "a.b", "", "1abc", "a-b", "a b"] {
            let c = PluginsConfig { proxy_active: vec![bad.into()], ..Default::default() };
            assert!(c.validate().unwrap_err().contains("LUNA_MATCHER_PROXY_ACTIVE_PLUGINS"), "{bad}");
        }
        let c = PluginsConfig { matcher_active: vec!["teapot".into(), "_x1".into()], ..Default::default() };
        assert!(c.validate().is_ok());
        let c = PluginsConfig { matcher_active: vec!["a".into(), "a".into()], ..Default::default() };
        assert!(c.validate().is_err());
    }

    #[test]
    fn matching_timeout_is_one_second_unless_a_plugin_says_otherwise() {
        let table = |v: serde_json::Value| v.as_object().unwrap().clone();
        let mut c = PluginsConfig::default();
        assert_eq!((c.settings("p").matching_timeout, c.settings("p").timeout), (Duration::from_secs(1), Duration::from_secs(5)));
        c.config.insert("p".into(), table(serde_json::json!({"matching_timeout": "250ms"})));
        assert!(c.validate().is_ok());
        assert_eq!((c.settings("p").matching_timeout, c.settings("q").matching_timeout), (Duration::from_millis(250), Duration::from_secs(1)));
        c.config.insert("p".into(), table(serde_json::json!({"matching_timeout": 3})));
        assert!(c.validate().unwrap_err().contains("plugins.config.p.matching_timeout"));
    }

    #[test]
    fn durations() {
        assert_eq!(duration::parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration::parse("2m").unwrap(), Duration::from_secs(120));
        assert!(duration::parse("soon").is_err());
    }
}

//! Configuration, layered as the README's Configuration section says:
//! built-in defaults < config file < environment < command line. The layers are merged as TOML trees and then
//! read once into [`Config`], which refuses unknown keys and bad values with
//! the key's path.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use luna_actors::settings::{duration, PluginsConfig};
use luna_core::api::{CacheScope, Shard};
use luna_core::descriptor::{VersionSpec, Versions};
use luna_core::store::PostgresConfig;
use luna_core::{Limits, StoreConfig};
use serde::{Deserialize, Serialize};
use toml::{Table, Value};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Standalone,
    Matcher,
    Proxy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub role: Role,
    pub host: String,
    /// 0: the role's default port.
    pub port: u16,
    /// actix-web worker threads; 0: one per core.
    pub workers: usize,
    pub log_format: LogFormat,
    /// Longest wait for a request's head once its connection is open.
    #[serde(with = "duration")]
    pub head_timeout: Duration,
    /// Longest wait for a request's whole body once its head is in.
    #[serde(with = "duration")]
    pub body_timeout: Duration,
    /// Open client connections at most; 0: derived from the descriptor limit.
    pub max_connections: usize,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            role: Role::Standalone,
            host: "127.0.0.1".into(),
            port: 0,
            workers: 0,
            log_format: LogFormat::Text,
            head_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(30),
            max_connections: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    pub backend: Backend,
    pub data_dir: PathBuf,
    /// The SQLite file; relative to `data_dir` unless absolute.
    pub path: PathBuf,
    /// Time between checkpoints that copy the WAL into the file and truncate it.
    #[serde(with = "duration")]
    pub checkpoint_interval: Duration,
    /// PostgreSQL connection string (backend postgres), libpq URL or key=value.
    pub dsn: String,
    /// PostgreSQL connections for writes and reads of single records.
    pub pool_size: usize,
    /// Longest time between two reads of the shared store's change log.
    #[serde(with = "duration")]
    pub poll_interval: Duration,
    /// Age past which the change log is trimmed.
    #[serde(with = "duration")]
    pub changes_retention: Duration,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            backend: Backend::Sqlite,
            data_dir: "data".into(),
            path: "luna-matcher.sqlite3".into(),
            checkpoint_interval: Duration::from_secs(60),
            dsn: String::new(),
            pool_size: 8,
            poll_interval: Duration::from_millis(200),
            changes_retention: Duration::from_secs(3600),
        }
    }
}

/// The lists this instance keeps in memory (backend postgres), as LUNA's
/// `DESCRIPTORS_CACHE.cached_data.faces_lists`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cache {
    /// Only these lists; absent: every list (and faces in no list).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include: Option<Vec<Uuid>>,
    /// Not these lists.
    pub exclude: Vec<Uuid>,
    /// Longest wait for a store position a matching request names.
    #[serde(with = "duration")]
    pub position_wait: Duration,
    /// Only this shard of the faces in scope, when a list is split over matchers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache { include: None, exclude: Vec::new(), position_wait: Duration::from_secs(2), shard: None }
    }
}

/// Role proxy: the matchers it sends default sub-requests to, and how it
/// tells whether they are up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Proxy {
    /// Base URLs of the matchers, e.g. "http://127.0.0.1:5100".
    pub matchers: Vec<String>,
    /// Longest wait for a TCP connection to a matcher.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Longest wait for a matcher's whole answer to one call.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Time between two reads of each matcher's `GET /1/matcher/cache`.
    #[serde(with = "duration")]
    pub poll_interval: Duration,
    /// Consecutive failed calls after which a matcher leaves rotation.
    pub failure_threshold: u32,
    /// Time between two probes of a matcher out of rotation.
    #[serde(with = "duration")]
    pub probe_interval: Duration,
}

impl Default for Proxy {
    fn default() -> Self {
        Proxy {
            matchers: Vec::new(),
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(500),
            failure_threshold: 3,
            probe_interval: Duration::from_secs(1),
        }
    }
}

/// What the service's monitoring points carry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Monitoring {
    /// The `instance` tag of every point; empty: host:port.
    pub instance: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Matching {
    /// Threads that scan candidates; 0: one per core.
    pub threads: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Descriptors {
    pub default_version: u32,
    pub versions: BTreeMap<String, VersionSpec>,
}

impl Default for Descriptors {
    fn default() -> Self {
        Descriptors { default_version: 62, versions: Versions::default_table().into_iter().map(|(v, s)| (v.to_string(), s)).collect() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shutdown {
    /// Longest wait for in-flight requests to finish.
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
    /// Longest wait for plugins' event queues to empty.
    #[serde(with = "duration")]
    pub flush_timeout: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown { drain_timeout: Duration::from_secs(30), flush_timeout: Duration::from_secs(5) }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    pub storage: Storage,
    pub cache: Cache,
    pub proxy: Proxy,
    pub monitoring: Monitoring,
    pub matching: Matching,
    pub descriptors: Descriptors,
    pub limits: Limits,
    pub plugins: PluginsConfig,
    pub shutdown: Shutdown,
}

impl Config {
    pub fn port(&self) -> u16 {
        match (self.server.port, self.server.role) {
            (0, Role::Proxy) => 5110,
            (0, _) => 5100,
            (p, _) => p,
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.storage.data_dir.join(&self.storage.path)
    }

    /// The store the core opens, and the setting that names it (for messages).
    pub fn store(&self) -> (StoreConfig, String) {
        match self.storage.backend {
            Backend::Sqlite => (StoreConfig::Sqlite(self.db_path()), format!("storage.path ({})", self.db_path().display())),
            Backend::Postgres => {
                let pg = PostgresConfig {
                    dsn: self.storage.dsn.clone(),
                    pool_size: self.storage.pool_size,
                    poll_interval: self.storage.poll_interval,
                    changes_retention: self.storage.changes_retention,
                    scope: CacheScope { include: self.cache.include.clone(), exclude: self.cache.exclude.clone(), shard: self.cache.shard },
                    position_wait: self.cache.position_wait,
                };
                (StoreConfig::Postgres(pg), "storage.dsn".into())
            }
        }
    }

    fn check_storage(&self) -> Result<(), String> {
        let s = &self.storage;
        match s.backend {
            Backend::Postgres if s.dsn.is_empty() => return Err("config key storage.dsn: required with storage.backend = \"postgres\"".into()),
            Backend::Postgres => luna_core::store::check_dsn(&s.dsn).map_err(|e| format!("config key storage.dsn: {e}"))?,
            Backend::Sqlite if self.cache.include.is_some() || !self.cache.exclude.is_empty() || self.cache.shard.is_some() => {
                return Err("config key cache: caching only some lists or a shard needs storage.backend = \"postgres\"".into())
            }
            Backend::Sqlite => {}
        }
        if s.pool_size == 0 {
            return Err("config key storage.pool_size: at least 1".into());
        }
        if s.poll_interval.is_zero() {
            return Err("config key storage.poll_interval: must be positive".into());
        }
        if s.changes_retention < Duration::from_secs(1) {
            return Err("config key storage.changes_retention: at least 1s".into());
        }
        if let Some(shard) = self.cache.shard.filter(|s| s.index >= s.count) {
            return Err(format!("config key cache.shard: index {} of {} shards: index must be below count", shard.index, shard.count));
        }
        Ok(())
    }

    /// Role proxy matches on other instances of the shared store.
    fn check_proxy(&self) -> Result<(), String> {
        let p = &self.proxy;
        if self.server.role != Role::Proxy {
            return Ok(());
        }
        if self.storage.backend != Backend::Postgres {
            return Err("config key server.role: role proxy needs storage.backend = \"postgres\", the store its matchers share".into());
        }
        if p.matchers.is_empty() {
            return Err("config key proxy.matchers: role proxy needs at least one matcher, e.g. [\"http://127.0.0.1:5100\"]".into());
        }
        for (i, url) in p.matchers.iter().enumerate() {
            let parsed = url.parse::<reqwest::Url>().map_err(|e| format!("config key proxy.matchers: [{i}] '{url}': {e}"))?;
            if parsed.scheme() != "http" {
                return Err(format!("config key proxy.matchers: [{i}] '{url}': only http:// is built"));
            }
        }
        for (key, value) in [
            ("connect_timeout", p.connect_timeout),
            ("request_timeout", p.request_timeout),
            ("poll_interval", p.poll_interval),
            ("probe_interval", p.probe_interval),
        ] {
            if value.is_zero() {
                return Err(format!("config key proxy.{key}: must be above 0ms"));
            }
        }
        if p.failure_threshold == 0 {
            return Err("config key proxy.failure_threshold: at least 1".into());
        }
        Ok(())
    }

    /// This instance's name in monitoring points and among a proxy's matchers.
    pub fn instance(&self) -> String {
        match self.monitoring.instance.as_str() {
            "" => format!("{}:{}", self.server.host, self.port()),
            name => name.to_owned(),
        }
    }

    pub fn versions(&self) -> Result<Versions, String> {
        let mut table = BTreeMap::new();
        for (key, spec) in &self.descriptors.versions {
            let v = key.parse::<u32>().map_err(|_| format!("config key descriptors.versions.{key}: a version is a number"))?;
            table.insert(v, *spec);
        }
        Versions::new(table, self.descriptors.default_version).map_err(|e| format!("config key descriptors: {e}"))
    }

    /// The plugins this role loads.
    pub fn active_plugins(&self) -> &[String] {
        match self.server.role {
            Role::Matcher => &self.plugins.matcher_active,
            Role::Proxy | Role::Standalone => &self.plugins.proxy_active,
        }
    }

    /// The service name plugins and monitoring points see, as in LUNA.
    pub fn service_name(&self) -> &'static str {
        match self.server.role {
            Role::Matcher => "luna-python-matcher",
            Role::Proxy | Role::Standalone => "luna-matcher-proxy",
        }
    }

    pub fn workers(&self) -> usize {
        match self.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// `server.max_connections`, or, when 0, what the descriptor limit
    /// `nofile` allows once the store, plugins, outgoing connections and the
    /// runtime have theirs: a tenth of it, and at least 256.
    pub fn max_connections(&self, nofile: u64) -> usize {
        match self.server.max_connections {
            0 => nofile.saturating_sub((nofile / 10).max(256)).max(16) as usize,
            n => n,
        }
    }

    pub fn threads(&self) -> usize {
        match self.matching.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// What the command line sets; `None` leaves the lower layers alone.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub role: Option<Role>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
}

const ENV_PREFIX: &str = "LUNA_MATCHER__";

/// Build the configuration from all layers. `file` must exist unless it is the default path.
pub fn load(file: &Path, must_exist: bool, env: &HashMap<String, String>, cli: &Overrides) -> Result<Config, String> {
    let mut tree = Value::try_from(Config::default()).map_err(|e| e.to_string())?;
    // Where a value came from, for error messages about it.
    let mut origin: HashMap<String, String> = HashMap::new();

    match std::fs::read_to_string(file) {
        Ok(text) => {
            let table: Table = text.parse().map_err(|e| format!("{}: {e}", file.display()))?;
            let table = Value::Table(table);
            for key in leaves(&table, String::new()) {
                origin.insert(key, format!("file {}", file.display()));
            }
            merge(&mut tree, table);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {}
        Err(e) => return Err(format!("{}: {e}", file.display())),
    }

    let mut env_keys: Vec<&String> = env.keys().filter(|k| k.starts_with(ENV_PREFIX)).collect();
    env_keys.sort();
    for name in env_keys {
        let path: Vec<String> = name[ENV_PREFIX.len()..].split("__").map(str::to_owned).collect();
        let key = set(&mut tree, &path, env_value(&env[name]))?;
        origin.insert(key, format!("environment variable {name}"));
    }
    for name in ["LUNA_PYTHON_MATCHER_ACTIVE_PLUGINS", "LUNA_MATCHER_PROXY_ACTIVE_PLUGINS"] {
        if let Some(raw) = env.get(name) {
            let list: Vec<String> =
                serde_json::from_str(raw).map_err(|e| format!("environment variable {name}: a JSON list of names, as '[\"my_plugin\"]': {e}"))?;
            let key = set(&mut tree, &["plugins".into(), name.into()], Value::try_from(list).map_err(|e| e.to_string())?)?;
            origin.insert(key, format!("environment variable {name}"));
        }
    }
    if env.get("SERVICE_TYPE").is_some_and(|v| v == "proxy") {
        let key = set(&mut tree, &["server".into(), "role".into()], Value::String("proxy".into()))?;
        origin.insert(key, "environment variable SERVICE_TYPE".into());
    }

    let cli_values: [(&str, &str, Option<Value>); 5] = [
        ("server", "role", cli.role.map(|r| Value::try_from(r).expect("role"))),
        ("server", "host", cli.host.clone().map(Value::String)),
        ("server", "port", cli.port.map(|p| Value::Integer(p.into()))),
        ("storage", "data_dir", cli.data_dir.as_ref().map(|d| Value::String(d.display().to_string()))),
        ("server", "log_format", cli.log_format.map(|f| Value::try_from(f).expect("log format"))),
    ];
    for (section, key, value) in cli_values {
        if let Some(v) = value {
            let key = set(&mut tree, &[section.into(), key.into()], v)?;
            origin.insert(key.clone(), format!("command line --{}", key.rsplit('.').next().unwrap_or_default().replace('_', "-")));
        }
    }

    let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
        let key = e.path().to_string();
        // The TOML layer appends "in `key`"; the key is named already.
        let message = e.inner().to_string();
        let message = message.split("\nin `").next().unwrap_or_default().trim_end();
        format!("config key {key}{}: {message}", from(&origin, &key, message))
    })?;
    check(&config).map_err(|e| match e.strip_prefix("config key ").and_then(|rest| rest.split_once(": ")) {
        Some((key, message)) => format!("config key {key}{}: {message}", from(&origin, key, message)),
        None => e,
    })?;
    Ok(config)
}

/// What the types alone do not check.
fn check(config: &Config) -> Result<(), String> {
    config.versions()?;
    config.check_storage()?;
    config.check_proxy()?;
    config.plugins.validate()?;
    if config.server.body_timeout.is_zero() {
        return Err("config key server.body_timeout: must be above 0ms, or every body would be refused".into());
    }
    Ok(())
}

/// ` (from <where>)` for an error about `key`: where the key, or the key below
/// it that the error names (an unknown field), was set. Empty for a default.
fn from(origin: &HashMap<String, String>, key: &str, message: &str) -> String {
    let below = || {
        origin.iter().find(|(k, _)| {
            let rest = if key.is_empty() { Some(k.as_str()) } else { k.strip_prefix(key).and_then(|r| r.strip_prefix('.')) };
            rest.and_then(|r| r.split('.').next()).is_some_and(|field| message.contains(&format!("`{field}`")) || message.contains(&format!("'{field}'")))
        })
    };
    let best = origin.get(key).or_else(|| below().map(|(_, o)| o));
    // A key under a section named by its own error (descriptors.versions.x) is found by prefix.
    let best = best.or_else(|| origin.iter().filter(|(k, _)| k.starts_with(&format!("{key}."))).map(|(_, o)| o).next());
    best.map(|o| format!(" (from {o})")).unwrap_or_default()
}

/// The dotted paths of every value in a table.
fn leaves(value: &Value, prefix: String) -> Vec<String> {
    match value {
        Value::Table(t) => t.iter().flat_map(|(k, v)| leaves(v, if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") })).collect(),
        _ => vec![prefix],
    }
}

/// Overlay `top` on `base`, table by table.
fn merge(base: &mut Value, top: Value) {
    match (base, top) {
        (Value::Table(b), Value::Table(t)) => {
            for (k, v) in t {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, t) => *b = t,
    }
}

/// Set a value at a path whose segments match existing keys case-insensitively
/// (environment names are upper case). Returns the dotted path as set.
fn set(tree: &mut Value, path: &[String], value: Value) -> Result<String, String> {
    let mut node = tree;
    let mut keys = Vec::new();
    for (i, segment) in path.iter().enumerate() {
        let Value::Table(table) = node else {
            return Err(format!("config key {}: {} is not a section", path.join("."), keys.join(".")));
        };
        let key = table.keys().find(|k| k.eq_ignore_ascii_case(segment)).cloned().unwrap_or_else(|| segment.to_ascii_lowercase());
        keys.push(key.clone());
        if i + 1 == path.len() {
            table.insert(key, value);
            break;
        }
        node = table.entry(key).or_insert_with(|| Value::Table(Table::new()));
    }
    Ok(keys.join("."))
}

/// An environment value is read as a TOML value when it parses as one
/// (numbers, booleans, lists), and as a string otherwise.
fn env_value(raw: &str) -> Value {
    format!("v = {raw}").parse::<Table>().ok().and_then(|mut t| t.remove("v")).unwrap_or_else(|| Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[server]\nport = 6000\nhost = \"0.0.0.0\"\n[limits]\nreferences = 5\n").unwrap();
        let e = env(&[("LUNA_MATCHER__SERVER__PORT", "6001"), ("LUNA_MATCHER__LIMITS__MAX_LIMIT", "50")]);
        let c = load(&file, true, &e, &Overrides::default()).unwrap();
        assert_eq!((c.port(), c.server.host.as_str(), c.limits.references, c.limits.max_limit), (6001, "0.0.0.0", 5, 50));
        let c = load(&file, true, &e, &Overrides { port: Some(6002), ..Default::default() }).unwrap();
        assert_eq!(c.port(), 6002);
        let e = env(&[("LUNA_MATCHER__SERVER__BODY_TIMEOUT", "2s"), ("LUNA_MATCHER__LIMITS__USER_DATA_CHARS", "64")]);
        let c = load(&file, true, &e, &Overrides::default()).unwrap();
        assert_eq!((c.server.body_timeout, c.limits.user_data_chars), (Duration::from_secs(2), 64));
        let proxy = [
            ("SERVICE_TYPE", "proxy"),
            ("LUNA_MATCHER__STORAGE__BACKEND", "postgres"),
            ("LUNA_MATCHER__STORAGE__DSN", "postgresql://luna@h1/faces"),
            ("LUNA_MATCHER__PROXY__MATCHERS", r#"["http://127.0.0.1:5100"]"#),
        ];
        let c = load(&file, true, &env(&proxy), &Overrides::default()).unwrap();
        assert_eq!(c.server.role, Role::Proxy);
        let e = env(&[("LUNA_MATCHER_PROXY_ACTIVE_PLUGINS", r#"["teapot", "x"]"#), ("LUNA_MATCHER__PLUGINS__QUEUE_SIZE", "7")]);
        let c = load(&file, true, &e, &Overrides::default()).unwrap();
        assert_eq!((c.active_plugins(), c.plugins.queue_size), (&["teapot".to_string(), "x".to_string()][..], 7));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[storage]\npaht = \"x\"\n").unwrap();
        let err = load(&file, true, &HashMap::new(), &Overrides::default()).unwrap_err();
        assert!(err.contains("storage") && err.contains("paht"), "{err}");
        let err = load(&dir.path().join("none.toml"), false, &env(&[("LUNA_MATCHER__SERVER__PORT", "99999")]), &Overrides::default()).unwrap_err();
        assert!(err.contains("server.port") && err.contains("LUNA_MATCHER__SERVER__PORT"), "{err}");
        let err = load(&dir.path().join("none.toml"), false, &env(&[("LUNA_MATCHER__SERVER__ROLE", "boss")]), &Overrides::default()).unwrap_err();
        assert!(err.contains("server.role"), "{err}");
        let err = load(&dir.path().join("none.toml"), false, &env(&[("LUNA_MATCHER__SERVER__BODY_TIMEOUT", "0s")]), &Overrides::default()).unwrap_err();
        assert!(err.contains("server.body_timeout"), "{err}");
        assert!(load(&dir.path().join("none.toml"), true, &HashMap::new(), &Overrides::default()).is_err());
        let err = load(&file_ok(&dir), true, &env(&[("LUNA_PYTHON_MATCHER_ACTIVE_PLUGINS", r#"["../x"]"#)]), &Overrides::default()).unwrap_err();
        assert!(err.contains("LUNA_PYTHON_MATCHER_ACTIVE_PLUGINS") && err.contains("../x"), "{err}");
        let err = load(&file_ok(&dir), true, &env(&[("LUNA_PYTHON_MATCHER_ACTIVE_PLUGINS", "teapot")]), &Overrides::default()).unwrap_err();
        assert!(err.contains("JSON list"), "{err}");
    }

    #[test]
    fn every_error_names_where_the_value_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let none = dir.path().join("none.toml");
        let load_env = |pairs: &[(&str, &str)]| load(&none, false, &env(pairs), &Overrides::default()).unwrap_err();
        // An unknown key: the error's path is its section, the variable is still named.
        let err = load_env(&[("LUNA_MATCHER__LIMITS__BOGUS", "1")]);
        assert!(err.contains("LUNA_MATCHER__LIMITS__BOGUS"), "{err}");
        // Checks after the types: the descriptor table and plugin names.
        let err = load_env(&[("LUNA_MATCHER__DESCRIPTORS__DEFAULT_VERSION", "7")]);
        assert!(err.contains("LUNA_MATCHER__DESCRIPTORS__DEFAULT_VERSION"), "{err}");
        let err = load_env(&[("LUNA_MATCHER__SERVER__BODY_TIMEOUT", "0s")]);
        assert!(err.contains("LUNA_MATCHER__SERVER__BODY_TIMEOUT"), "{err}");
        let err = load_env(&[("LUNA_MATCHER__PLUGINS__CONFIG__TEAPOT__TIMEOUT", "\"soon\"")]);
        assert!(err.contains("LUNA_MATCHER__PLUGINS__CONFIG__TEAPOT__TIMEOUT"), "{err}");
        // A duration given as a number says how to write it.
        let err = load_env(&[("LUNA_MATCHER__PLUGINS__TIMEOUT", "5")]);
        assert!(err.contains("plugins.timeout") && err.contains("LUNA_MATCHER__PLUGINS__TIMEOUT") && err.contains("\"5s\""), "{err}");
        // A value from the file names the file.
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[shutdown]\ndrain_timeout = 30\n").unwrap();
        let err = load(&file, true, &HashMap::new(), &Overrides::default()).unwrap_err();
        assert!(err.contains("shutdown.drain_timeout") && err.contains(&format!("file {}", file.display())) && err.contains("\"30s\""), "{err}");
    }

    #[test]
    fn max_connections_leave_descriptors_for_the_rest() {
        let c = Config::default();
        assert_eq!((c.max_connections(20_000), c.max_connections(1024)), (18_000, 768));
        let c = Config { server: Server { max_connections: 50, ..Default::default() }, ..Default::default() };
        assert_eq!(c.max_connections(20_000), 50);
    }

    #[test]
    fn shared_store_settings_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let list = "6d3f2a5e-1111-4222-8333-444455556666";
        let e = env(&[
            ("LUNA_MATCHER__STORAGE__BACKEND", "postgres"),
            ("LUNA_MATCHER__STORAGE__DSN", "postgresql://luna@h1:5432,h2:5432/faces?target_session_attrs=read-write"),
            ("LUNA_MATCHER__STORAGE__POLL_INTERVAL", "50ms"),
            ("LUNA_MATCHER__CACHE__INCLUDE", &format!(r#"["{list}"]"#)),
        ]);
        let c = load(&file_ok(&dir), true, &e, &Overrides::default()).unwrap();
        assert_eq!((c.storage.backend, c.storage.poll_interval, c.storage.pool_size), (Backend::Postgres, Duration::from_millis(50), 8));
        assert_eq!(c.cache.include, Some(vec![list.parse().unwrap()]));
        let (store, setting) = c.store();
        assert!(matches!(store, StoreConfig::Postgres(pg) if pg.scope.include == c.cache.include && pg.position_wait == Duration::from_secs(2)));
        assert_eq!(setting, "storage.dsn");

        let refused = |pairs: &[(&str, &str)], key: &str| {
            let err = load(&file_ok(&dir), true, &env(pairs), &Overrides::default()).unwrap_err();
            assert!(err.contains(key), "{err}");
        };
        refused(&[("LUNA_MATCHER__STORAGE__BACKEND", "postgres")], "storage.dsn");
        refused(&[("LUNA_MATCHER__STORAGE__BACKEND", "postgres"), ("LUNA_MATCHER__STORAGE__DSN", "postgresql://[x")], "storage.dsn");
        refused(&[("LUNA_MATCHER__STORAGE__BACKEND", "mysql")], "storage.backend");
        refused(&[("LUNA_MATCHER__CACHE__EXCLUDE", &format!(r#"["{list}"]"#))], "cache");
        refused(&[("LUNA_MATCHER__CACHE__INCLUDE", r#"["not-a-uuid"]"#)], "cache.include");
    }

    #[test]
    fn role_proxy_needs_the_shared_store_and_matchers() {
        let dir = tempfile::tempdir().unwrap();
        let pg = [("LUNA_MATCHER__STORAGE__BACKEND", "postgres"), ("LUNA_MATCHER__STORAGE__DSN", "postgresql://luna@h1/faces")];
        let err = load(&file_ok(&dir), true, &env(&[("SERVICE_TYPE", "proxy")]), &Overrides::default()).unwrap_err();
        assert!(err.contains("server.role") && err.contains("postgres") && err.contains("environment variable SERVICE_TYPE"), "{err}");
        let err = load(&file_ok(&dir), true, &env(&pg), &Overrides { role: Some(Role::Proxy), ..Default::default() }).unwrap_err();
        assert!(err.contains("proxy.matchers"), "{err}");
        let mut e = pg.to_vec();
        e.push(("LUNA_MATCHER__PROXY__MATCHERS", r#"["http://127.0.0.1:5100", "http://10.0.0.2:5100/"]"#));
        e.push(("LUNA_MATCHER__MONITORING__INSTANCE", "proxy-1"));
        let c = load(&file_ok(&dir), true, &env(&e), &Overrides { role: Some(Role::Proxy), ..Default::default() }).unwrap();
        assert_eq!((c.proxy.matchers.len(), c.proxy.failure_threshold, c.instance().as_str(), c.port()), (2, 3, "proxy-1", 5110));
        e.push(("LUNA_MATCHER__PROXY__MATCHERS", r#"["https://m1"]"#));
        let err = load(&file_ok(&dir), true, &env(&e), &Overrides { role: Some(Role::Proxy), ..Default::default() }).unwrap_err();
        assert!(err.contains("proxy.matchers") && err.contains("http://"), "{err}");
        let shard = [pg[0], pg[1], ("LUNA_MATCHER__CACHE__SHARD", "{ index = 2, count = 2 }")];
        let err = load(&file_ok(&dir), true, &env(&shard), &Overrides::default()).unwrap_err();
        assert!(err.contains("cache.shard") && err.contains("LUNA_MATCHER__CACHE__SHARD"), "{err}");
        assert_eq!(Config::default().instance(), "127.0.0.1:5100");
    }

    fn file_ok(dir: &tempfile::TempDir) -> std::path::PathBuf {
        let f = dir.path().join("ok.toml");
        std::fs::write(&f, "").unwrap();
        f
    }
}

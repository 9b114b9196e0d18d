use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use luna_matcher::config::{self, LogFormat, Overrides, Role};
use luna_matcher::server::Failure;
use luna_matcher::tools::{bench, import};

const DEFAULT_CONFIG: &str = "conf/luna-matcher.toml";

/// Face-descriptor matching service with LUNA PLATFORM 5's Python Matcher API.
/// Without a command, it runs the service.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true, after_help = ENVIRONMENT)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (TOML, every key optional) [default: conf/luna-matcher.toml, if present]
    #[arg(long)]
    config: Option<PathBuf>,
    /// standalone: matching plugins in front of an in-process matcher (port 5100);
    /// matcher: LUNA's Python Matcher (port 5100); proxy: LUNA's Matcher Proxy in
    /// front of remote matchers (port 5110) [default: standalone]
    #[arg(long, value_enum)]
    role: Option<Role>,
    /// Address to listen on [default: 127.0.0.1]
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on [default: the role's]
    #[arg(long)]
    port: Option<u16>,
    /// Directory of the embedded store and its lock file [default: ./data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log lines as text or as JSON objects [default: text]
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

/// The environment the service reads, after the flags in `--help`.
const ENVIRONMENT: &str = "\
Environment:
  LUNA_MATCHER__<SECTION>__<KEY>      any key of the configuration, e.g. LUNA_MATCHER__LIMITS__MAX_LIMIT=50;
                                      lists and numbers as TOML values, durations as text (\"5s\")
  LUNA_MATCHER_PROXY_ACTIVE_PLUGINS   plugins of roles standalone and proxy, a JSON list: '[\"teapot\"]'
  LUNA_PYTHON_MATCHER_ACTIVE_PLUGINS  plugins of role matcher, a JSON list
  SERVICE_TYPE=proxy                  role proxy, as LUNA's image takes it
  VIRTUAL_ENV                         the plugins' virtual environment, unless plugins.venv is set
  RUST_LOG                            log level, e.g. info (the default), debug, luna_matcher::access=warn

Precedence: built-in defaults < configuration file < environment < flags. An unknown key or a bad
value stops start-up with exit code 2 and names the key and where it was set.";

#[derive(Subcommand)]
enum Command {
    /// Load descriptors into a list over HTTP, resumably
    Import(import::ImportArgs),
    /// Measure a running matcher: throughput and latency, answers checked
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Import(args)) => return ExitCode::from(import::main(args)),
        Some(Command::Bench(args)) => return ExitCode::from(bench::main(args)),
        None => {}
    }
    let overrides = Overrides { role: cli.role, host: cli.host, port: cli.port, data_dir: cli.data_dir, log_format: cli.log_format };
    let env: HashMap<String, String> = std::env::vars().collect();
    let (file, must_exist) = match cli.config {
        Some(f) => (f, true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let config = match config::load(&file, must_exist, &env, &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("luna-matcher: {e}");
            return ExitCode::from(2);
        }
    };
    luna_matcher::logging::init(config.server.log_format);
    if file.exists() {
        log::info!("configuration from {}", file.display());
    } else {
        log::info!("no {}: built-in defaults", file.display());
    }
    match actix_rt::System::new().block_on(luna_matcher::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(e)) => {
            log::error!("{e}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(e)) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

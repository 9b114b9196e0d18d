use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use luna_matcher::config::{self, LogFormat, Overrides, Role};

const DEFAULT_CONFIG: &str = "conf/luna-matcher.toml";

/// Face-descriptor matching service with LUNA PLATFORM 5's Python Matcher API.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Configuration file [default: conf/luna-matcher.toml]
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, value_enum)]
    role: Option<Role>,
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    port: Option<u16>,
    /// Directory of the SQLite file [default: ./data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Err(failure) => {
            log::error!("{}", failure.message);
            ExitCode::from(failure.exit_code)
        }
    }
}

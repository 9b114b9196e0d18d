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
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
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

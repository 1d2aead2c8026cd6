//! The `longmem` command line: parse arguments, load the config, call into the library.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use longmem::admin;
use longmem::config::Config;
use longmem::memory::Store;
use longmem::metrics::{self, Health};
use longmem::pipeline::{self, RunStats};
use longmem::rollout::{Command as RolloutCommand, RollRequest, Rollout};
use longmem::shutdown::{self, Shutdown};

/// Threads hand buffers to each other on every batch (outputs built by the polling thread are freed
/// by the finisher), and glibc's allocator makes them queue on its arena locks for it; mimalloc's
/// per-thread heaps do not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "longmem",
    version,
    about = "Kafka events → long-term memory → ONNX models → real-time recommendations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM or SIGINT; SIGHUP rolls to the config file's `[model]`.
    Run {
        /// The config file (TOML; `LONGMEM__SECTION__KEY` environment variables override it).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file (with LONGMEM__ environment overrides) and print the effective config.
    /// With the model's and forecaster's manifests and graph files and the ONNX Runtime library.
    CheckConfig {
        /// The config file to check.
        file: PathBuf,
        /// Check the file and its overrides only, not the files it names (for a config meant for
        /// another machine, such as config/production.toml on a workstation).
        #[arg(long)]
        config_only: bool,
    },
    /// Print what the store remembers (stop the daemon first: the store is locked while it runs).
    Inspect {
        /// The config file of the daemon whose store to read.
        #[arg(long, short, default_value = "config/default.toml")]
        config: PathBuf,
        #[command(subcommand)]
        what: InspectWhat,
    },
    #[cfg(feature = "tools")]
    /// Stream MovieLens-100k through the daemon on an embedded broker and print a summary.
    Demo(longmem::tools::demo::DemoArgs),
    #[cfg(feature = "tools")]
    /// Throughput, latency, CPU and memory on a real broker, next to the ceilings measured in the same run.
    Bench(longmem::tools::bench::BenchArgs),
    #[cfg(feature = "tools")]
    /// Write a simulated event stream driven by real data, with its ground truth.
    Simulate {
        #[command(subcommand)]
        what: SimulateWhat,
    },
    #[cfg(feature = "tools")]
    /// Replay real or simulated data through the daemon and score its live output.
    #[command(alias = "eval")]
    Evaluate {
        #[command(subcommand)]
        what: EvaluateWhat,
    },
}

#[cfg(feature = "tools")]
#[derive(Subcommand)]
enum SimulateWhat {
    /// SupplyGraph demand, replenishment orders, SCMS delivery delays; stockouts as ground truth.
    SupplyChain(longmem::tools::simulate::SimulateCommand),
}

#[cfg(feature = "tools")]
#[derive(Subcommand)]
enum EvaluateWhat {
    /// Inventory alerts against the simulation's stockouts, next to the reorder-point rule.
    SupplyChain(longmem::tools::evaluate::supply_chain::EvaluateArgs),
    /// HR@10 / NDCG@10 of the live recommendations on MovieLens-100k, next to the model card's.
    Recommendations(longmem::tools::evaluate::recommendations::RecommendationEvalArgs),
}

#[derive(Subcommand)]
enum InspectWhat {
    /// A user's stored memory, as JSON.
    User {
        /// The user's id, as in the events' `user_id`.
        id: String,
    },
}

fn main() {
    let cli = Cli::parse();
    // The daemon logs its life cycle; one-shot commands only what goes wrong.
    let default_filter = match cli.command {
        Command::Run { .. } => "info,librdkafka=warn",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LONGMEM_LOG")
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = dispatch(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(exit_code(&e));
    }
}

/// A configuration error exits with `EX_CONFIG` (78, sysexits.h), so a supervisor or a deploy
/// script can tell "fix the config" from a failure at run time (1).
const EXIT_CONFIG: i32 = 78;

fn exit_code(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<longmem::config::ConfigError>().is_some() {
        EXIT_CONFIG
    } else {
        1
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config: path } => run_daemon(Config::load(&path)?, path),
        Command::CheckConfig { file, config_only } => {
            let config = Config::load(&file)?;
            if !config_only {
                eprintln!("{}", longmem::model::check_installed(&config)?);
            }
            print!("{}", config.to_toml());
            eprintln!("{}: ok", file.display());
            Ok(())
        }
        Command::Inspect {
            config,
            what: InspectWhat::User { id },
        } => {
            let config = Config::load(&config)?;
            let store = Store::open_existing(&config.store.path, 16 << 20)?;
            match store.user(&id)? {
                Some(memory) => {
                    // The model state is thousands of floats: show whose it is and its size. A
                    // Transformer's key/value cache is not stored (it lives in RAM): null.
                    let state = memory.model_state.as_ref().map(|s| {
                        serde_json::json!({"owner": s.owner, "tensors": s.tensors.len(), "bytes": s.tensors.bytes()})
                    });
                    let view = serde_json::json!({
                        "user_id": id,
                        "recent_items": memory.recent_items,
                        "clicks": memory.clicks,
                        "purchases": memory.purchases,
                        "last_event_ms": memory.last_event_ms,
                        "model_state": state,
                    });
                    println!("{}", serde_json::to_string_pretty(&view)?);
                    Ok(())
                }
                None => anyhow::bail!(
                    "user `{id}` has no stored memory in {}",
                    config.store.path.display()
                ),
            }
        }
        #[cfg(feature = "tools")]
        Command::Demo(args) => longmem::tools::demo::run(args),
        #[cfg(feature = "tools")]
        Command::Bench(args) => longmem::tools::bench::run(args),
        #[cfg(feature = "tools")]
        Command::Simulate {
            what: SimulateWhat::SupplyChain(args),
        } => longmem::tools::simulate::run(args),
        #[cfg(feature = "tools")]
        Command::Evaluate {
            what: EvaluateWhat::SupplyChain(args),
        } => longmem::tools::evaluate::supply_chain::run(args),
        #[cfg(feature = "tools")]
        Command::Evaluate {
            what: EvaluateWhat::Recommendations(args),
        } => longmem::tools::evaluate::recommendations::run(args),
    }
}

/// On each SIGHUP: reads the config file again and rolls to its `[model]` (path and mode); the
/// outcome goes to the log and to `longmem_model_reloads_total`.
async fn roll_on_hangup(config_path: PathBuf, rollout: Rollout) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler; roll models through the admin API");
        return;
    };
    while hangups.recv().await.is_some() {
        let config = match Config::load(&config_path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, path = %config_path.display(), "SIGHUP: the config file does not load; the live model keeps serving");
                continue;
            }
        };
        tracing::info!(path = %config.model.path.display(), "SIGHUP: rolling to the config file's model");
        let request = RollRequest {
            path: config.model.path,
            mode: Some(config.model.mode),
            promote: true,
        };
        match rollout.ask(RolloutCommand::Roll(request)).await {
            Some(outcome) => {
                tracing::info!(outcome = %serde_json::to_string(&outcome).unwrap_or_default(), "SIGHUP: model rollout done")
            }
            None => tracing::warn!("SIGHUP: the pipeline is not running; nothing rolled"),
        }
    }
}

fn run_daemon(config: Config, config_path: PathBuf) -> anyhow::Result<()> {
    let handle = metrics::install();
    let health = Arc::new(Health::default());
    let stop = Shutdown::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let server =
            metrics::bind(&config.metrics.listen, handle, health.clone(), stop.clone()).await?;
        let server = tokio::spawn(server);
        tokio::spawn(shutdown::on_signals(stop.clone()));
        tokio::spawn(metrics::watchdog(
            health.clone(),
            Duration::from_secs(config.metrics.stall_timeout_s),
            stop.clone(),
        ));
        tracing::info!(listen = %config.metrics.listen, "serving /metrics, /healthz, /readyz");
        let (rollout, desk) = Rollout::new();
        if let Some(listen) = &config.admin.listen {
            let token = admin::load_token(config.admin.token_file.as_deref())?;
            let server = admin::bind(listen, token.clone(), rollout.clone(), stop.clone()).await?;
            tokio::spawn(server);
            tracing::info!(%listen, token = token.is_some(), "serving the admin API (POST /admin/model, /admin/model/rollback)");
        }
        tokio::spawn(roll_on_hangup(config_path, rollout));
        let pipeline_stop = stop.clone();
        let grace = config.in_flight_deadline();
        let pipeline = tokio::task::spawn_blocking(move || {
            pipeline::run(
                &config,
                health,
                pipeline_stop,
                Arc::new(RunStats::default()),
                Some(desk),
            )
        });
        // Shutdown waits for the batch in hand, never for ever: past the deadline the process
        // exits without it (its state is unwritten, so a restart replays it from the store).
        let mut stopping = stop.clone();
        let overdue = async move {
            stopping.wait().await;
            tokio::time::sleep(grace).await;
        };
        let result = tokio::select! {
            joined = pipeline => joined.context("the pipeline thread panicked")?,
            _ = overdue => {
                tracing::error!(?grace, "the pipeline did not stop within the deadline after shutdown; exiting without it (unwritten batches replay on restart)");
                std::process::exit(1);
            }
        };
        stop.trigger();
        if let Ok(Err(e)) = server.await {
            tracing::warn!(error = %e, "metrics server stopped with an error");
        }
        result.map_err(anyhow::Error::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `longmem help` is the reference an operator reads first: nothing in it goes unexplained.
    #[test]
    fn every_subcommand_and_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(sub_path.clone());
                }
                walk(sub, &sub_path, missing);
            }
        }
        let cli = Cli::command();
        cli.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cli, "longmem", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }
}

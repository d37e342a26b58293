//! The `meshkv` binary: parse flags, load config, set up tracing, run.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::{run_client, Cli, Command, Outcome, ServeArgs};
use meshkv::{
    config::{self, LogFormat},
    error::one_line,
    node,
};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// jemalloc, not glibc's malloc. Measured on 3 local nodes, it cut the CPU
/// per replicated write by about a sixth, mostly time glibc spent in
/// `_int_malloc`, `malloc_consolidate` and free-list upkeep, and it returns
/// freed memory (memtables after a flush) to the OS by itself, where glibc
/// needed arena caps and periodic `malloc_trim`.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts: a background thread returns
/// dirty pages to the OS after a second, so a node at rest holds little
/// more than it uses (104 to 158 MiB after 1,000,000 keys in three
/// `bench/compare.sh` runs), and two arenas are plenty on two cores.
#[cfg(not(target_env = "msvc"))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:2\0";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli
        .command
        .unwrap_or_else(|| Command::Serve(ServeArgs::default()));
    let result = match command {
        Command::Serve(args) => serve(args).map(|()| Outcome::Ok),
        client => {
            // Client commands print one sentence per error; the details
            // behind it are debug logs, shown only when asked for.
            if std::env::var_os("RUST_LOG").is_some() {
                init_tracing(LogFormat::Pretty);
            }
            runtime().and_then(|rt| Ok(rt.block_on(run_client(client))?))
        }
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Negative) => ExitCode::from(1),
        Err(e) => {
            eprintln!("meshkv: {}", one_line(&*e));
            ExitCode::from(2)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config::Loaded { config, warnings } =
        config::load(args.config.as_deref(), std::env::vars(), args.overrides())?;
    init_tracing(config.log_format);
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    let rt = runtime()?;
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(on_signal(shutdown.clone()));
        node::run(config, shutdown).await
    })?;
    Ok(())
}

fn init_tracing(format: LogFormat) {
    // The storage engine logs routine maintenance at info; keep it out of the default view.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,fjall=warn,lsm_tree=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The first SIGINT or SIGTERM starts a graceful shutdown; a second one exits at once.
async fn on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    for round in 0..2 {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if round == 0 {
            tracing::info!("signal received: shutting down (send again to exit at once)");
            shutdown.cancel();
        }
    }
    tracing::warn!("second signal: exiting without draining");
    std::process::exit(130);
}

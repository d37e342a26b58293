//! The `meshkv` binary: parse flags, load config, set up tracing, run.

use std::process::ExitCode;

use clap::Parser;
use meshkv::{
    cli::{run_client, Cli, Command, Outcome, ServeArgs},
    config::{self, LogFormat},
    error::one_line,
    server,
};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

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

/// Caps glibc's malloc at two arenas. By default it makes up to eight per
/// core, and every thread that ever allocates (runtime workers, the writer,
/// the blocking pool, the engine's workers) can end up holding freed memory
/// in its own: after loading 1,000,000 keys a node held about a third more
/// resident memory than with two arenas, which cost no measurable CPU.
/// Called before any thread starts.
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; no thread is running yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Hands memory that malloc holds free back to the OS. glibc returns only
/// the top of a heap by itself, so the memtables the engine frees after a
/// flush would otherwise stay resident for good. Trimming often under load
/// would only trade page faults for the same memory, so it runs once a
/// quiet second (under 10% of a core) begins, and at most every 10 s while
/// the node stays busy.
async fn trim_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        fn cpu_time() -> std::time::Duration {
            // SAFETY: getrusage fills the struct it is given.
            let mut u: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
            let tv = |t: libc::timeval| {
                std::time::Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000)
            };
            tv(u.ru_utime) + tv(u.ru_stime)
        }
        const TICK: std::time::Duration = std::time::Duration::from_secs(1);
        const BUSY_EVERY: u32 = 10;
        let mut last = cpu_time();
        let (mut was_idle, mut since_trim) = (false, 0u32);
        loop {
            tokio::time::sleep(TICK).await;
            let now = cpu_time();
            let idle = now.saturating_sub(last) < TICK / 10;
            since_trim += 1;
            if (idle && !was_idle) || since_trim >= BUSY_EVERY {
                // SAFETY: malloc_trim only releases free pages; it is thread-safe.
                let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
                since_trim = 0;
            }
            was_idle = idle;
            last = cpu_time();
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    cap_malloc_arenas();
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
        tokio::spawn(trim_malloc());
        server::run(config, shutdown).await
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

//! fleetd: the agent, engine and API server of one machine.

use fleetd::config::{self, Loaded};
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Before any thread starts, so that none gets an arena past the cap (the log forwarders
    // below are fleetd too).
    let arenas = fleetd::memory::limit_arenas();
    // The process supervisor re-executes fleetd as each unit's log forwarder.
    supervisor::run_helper_if_requested();
    let loaded = config::load(
        std::env::args_os(),
        &config::process_env,
        Path::new(config::DEFAULT_CONFIG_FILE),
    );
    let cfg = match loaded {
        Ok(Loaded::Run(cfg)) => cfg,
        Ok(Loaded::Version(text)) | Ok(Loaded::Help(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(Loaded::Completion(shell)) => {
            return write_stdout(&config::completion(shell));
        }
        Ok(Loaded::ManPages(dir)) => {
            return match config::man_pages(&dir) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fleetd: writing the manual page to {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            };
        }
        Err(e) => {
            eprintln!("fleetd: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = fleetd::logging::init(cfg.verbosity, cfg.log_format) {
        eprintln!("fleetd: {e}");
        return ExitCode::FAILURE;
    }
    raise_open_files_limit();
    match arenas {
        Some(n) => tracing::debug!(arenas = n, "malloc arenas capped"),
        None => tracing::debug!("malloc arenas as the environment sets them"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetd: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.spawn(fleetd::memory::release_periodically());
    match runtime.block_on(fleetd::daemon::run(*cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("fleetd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A closed stdout is an error message and exit 1, not a panic.
fn write_stdout(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetd: writing to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit of open files to the hard one, as Go's runtime does for fleet: a burst
/// of a thousand units (API connections, registry streams, unit files written side by side)
/// went past the soft 1,024 that systemd gives a service, and writes failed with EMFILE.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "could not raise the open files limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not read the open files limit"),
    }
}

//! Logging to stderr (journald picks it up under systemd): info by default, debug when
//! `verbosity` > 0; `RUST_LOG` overrides.

pub fn init(verbosity: i32) {
    let default = if verbosity > 0 { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

//! The process supervisor's log forwarder as a standalone executable, for hosts and tests that
//! run a `ProcessManager` from a binary that is not fleetd (see `supervisor::log`).

fn main() {
    supervisor::run_helper_if_requested();
    eprintln!("fleet-process-helper is started by fleetd's process supervisor, not by hand");
    std::process::exit(2);
}

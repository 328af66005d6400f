//! Our own process supervisor for hosts without systemd (owned by the process-manager work).

//! A real systemd under systemd-nspawn for tests (owned by the systemd-manager work).

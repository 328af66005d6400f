//! systemd over D-Bus (owned by the systemd-manager work).

//! fleetd configuration (owned by the configuration work).

//! fleet's scale benchmark with hollow machines: many real agents (presence, watches, reconcile,
//! state publishing) in one process over an in-memory unit manager, the real engine and API
//! server, and one real etcd. See `fleet-bench --help`. [`load`] is the API's load test
//! against one real fleetd (`fleet-bench load --help`).

pub mod etcd_metrics;
pub mod hollow;
pub mod load;
pub mod mix;
pub mod report;
pub mod run;
pub mod sys;
pub mod tracker;

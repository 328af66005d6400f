//! `fleetctl drain MACHINE` and `fleetctl undrain MACHINE`: take a machine out of service
//! (no new units; the engine moves its units elsewhere one at a time) and return it. Speaks
//! `/fleet/v1/drain`, an extension of fleet's API.
//!
//! ```
//! use api::types::{DrainedMachine, DrainedUnit};
//! let m = DrainedMachine {
//!     machine_id: "2444264c0de1e9d0fae2a46a6ab5a5a8".into(),
//!     units: vec![DrainedUnit { name: "db.service".into(), status: "moves".into(),
//!         machine_id: "5b8e2f1a8dbb4e1f9a3c7d6e5f4a3b2c".into(), ..Default::default() }],
//!     ..Default::default()
//! };
//! assert_eq!(fleetctl::drain::units_text(&m, false), "db.service\tmoves to 5b8e2f1a...\n");
//! ```

use crate::cli::Block;
use crate::client::Fleet;
use crate::fields::id_legend;
use crate::output::Output;
use crate::tabwriter::format_go;
use api::types::DrainedMachine;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// How often `drain` reads the machine's report while it waits.
const POLL: Duration = Duration::from_secs(1);
/// fleet's `--block-attempts` count attempts of this long.
const ATTEMPT: Duration = Duration::from_secs(2);

/// One line per unit left on a drained machine: what becomes of it.
pub fn units_text(m: &DrainedMachine, full: bool) -> String {
    let mut text = String::new();
    for u in &m.units {
        let what = match u.status.as_str() {
            "moves" => format!("moves to {}", id_legend(&u.machine_id, full)),
            "waits" => "waits for its turn".to_string(),
            "stays" => format!("stays: {}", u.reason),
            other => other.to_string(),
        };
        text.push_str(&format!("{}\t{what}\n", u.name));
    }
    format_go(&text)
}

/// The one id among `ids` that `prefix` starts, or why there is none.
fn resolve(prefix: &str, ids: &BTreeSet<String>) -> Result<String, String> {
    let found: Vec<&String> = ids.iter().filter(|id| id.starts_with(prefix)).collect();
    match found.as_slice() {
        [id] => Ok((*id).clone()),
        [] => Err(format!(
            "Unable to find machine {prefix}: fleetctl list-machines --full lists the machines"
        )),
        _ => Err(format!(
            "Found more than one machine whose id starts with {prefix}; give more of the id (fleetctl list-machines --full)"
        )),
    }
}

pub async fn drain(fleet: &Fleet, args: &[String], block: &Block, out: &Output) -> i32 {
    let [prefix] = args else {
        out.eprintln("One machine must be provided (a unique prefix of its id)");
        return 1;
    };
    let ids: BTreeSet<String> = match fleet.machines().await {
        Ok(m) => m.into_iter().map(|m| m.id).collect(),
        Err(e) => {
            out.eprintln(&format!("Error retrieving list of machines: {e}"));
            return 1;
        }
    };
    let id = match resolve(prefix, &ids) {
        Ok(id) => id,
        Err(e) => {
            out.eprintln(&e);
            return 1;
        }
    };
    let mut report = match fleet.drain(&id).await {
        Ok(r) => r,
        Err(e) => {
            out.eprintln(&format!("Error draining machine {id}: {e}"));
            return 1;
        }
    };
    let short = id_legend(&id, false);
    out.println(&format!(
        "Machine {short} drained: it takes no new units, and its units move one at a time"
    ));
    let listed = units_text(&report, false);
    if !listed.is_empty() {
        out.println(listed.trim_end_matches('\n'));
    }
    if block.no_block {
        return 0;
    }
    let limit = if block.timeout > 0.0 {
        Some(Duration::from_secs_f64(block.timeout))
    } else if block.block_attempts > 0 {
        Some(ATTEMPT * block.block_attempts)
    } else {
        None
    };
    let began = Instant::now();
    loop {
        if report.settled() {
            let stays = report.units.len();
            out.println(&match stays {
                0 => format!("Machine {short} holds no units"),
                n => format!("Machine {short} holds only units that cannot move ({n})"),
            });
            return 0;
        }
        if limit.is_some_and(|l| began.elapsed() >= l) {
            out.eprintln(&format!(
                "Machine {short} still holds {} unit(s) that can move; the engine goes on moving them (fleetctl drain {short} again to follow)",
                report.units.iter().filter(|u| u.status != "stays").count()
            ));
            return 1;
        }
        tokio::time::sleep(POLL).await;
        let next = match fleet.drain_status(&id).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                out.eprintln(&format!(
                    "Machine {short} was undrained while waiting for its units to move"
                ));
                return 1;
            }
            Err(e) => {
                out.eprintln(&format!("Error reading the drain of machine {id}: {e}"));
                return 1;
            }
        };
        let still: BTreeSet<&str> = next.units.iter().map(|u| u.name.as_str()).collect();
        for gone in report
            .units
            .iter()
            .filter(|u| !still.contains(u.name.as_str()))
        {
            let to = match fleet.unit(&gone.name).await {
                Ok(Some(u)) if !u.machine_id.is_empty() => {
                    format!(" to {}", id_legend(&u.machine_id, false))
                }
                _ => String::new(),
            };
            out.println(&format!("Moved {}{to}", gone.name));
        }
        report = next;
    }
}

pub async fn undrain(fleet: &Fleet, args: &[String], out: &Output) -> i32 {
    let [prefix] = args else {
        out.eprintln("One machine must be provided (a unique prefix of its id)");
        return 1;
    };
    // A drained machine that left the cluster can be undrained too.
    let ids: BTreeSet<String> = match fleet.drains().await {
        Ok(d) => d.into_iter().map(|m| m.machine_id).collect(),
        Err(e) => {
            out.eprintln(&format!("Error retrieving the drained machines: {e}"));
            return 1;
        }
    };
    let id = match resolve(prefix, &ids) {
        Ok(id) => id,
        Err(_) => {
            out.println(&format!("Machine {prefix} is not drained"));
            return 0;
        }
    };
    let short = id_legend(&id, false);
    match fleet.undrain(&id).await {
        Ok(true) => {
            out.println(&format!("Machine {short} is back in service"));
            0
        }
        Ok(false) => {
            out.println(&format!("Machine {short} is not drained"));
            0
        }
        Err(e) => {
            out.eprintln(&format!("Error undraining machine {id}: {e}"));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_are_found_by_a_unique_prefix() {
        let ids: BTreeSet<String> = ["aa11", "aa22", "bb33"].map(String::from).into();
        assert_eq!(resolve("b", &ids), Ok("bb33".to_string()));
        assert_eq!(resolve("aa1", &ids), Ok("aa11".to_string()));
        assert!(resolve("aa", &ids).unwrap_err().contains("more than one"));
        assert!(resolve("cc", &ids).unwrap_err().contains("list-machines"));
    }
}

//! `fleetctl events [-f]`: the cluster's events, one line each, oldest first.
//!
//! ```
//! use api::types::Event;
//! let e = Event {
//!     revision: 7,
//!     time: "2026-12-06T20:15:01.250Z".into(),
//!     kind: "placed".into(),
//!     unit: "hello.service".into(),
//!     machine_id: "2f0dc7a6e4f84c0b9a4e1a7c2e0b1d53".into(),
//!     detail: String::new(),
//!     recent: false,
//! };
//! assert_eq!(
//!     fleetctl::events::line(&e, false),
//!     "2026-12-06T20:15:01.250Z  placed          hello.service             2f0dc7a6  -"
//! );
//! ```

use crate::client::Fleet;
use api::types::{Event, EventFilter};
use std::io::Write;

/// The legend, padded as [`line`] pads its cells.
pub fn legend(full: bool) -> String {
    row("TIME", "KIND", "UNIT", "MACHINE", "DETAIL", full)
}

/// One event as a line. The cells are padded to fixed widths rather than to the widest cell
/// as fleet's tables are: a followed stream prints each line before the next exists.
pub fn line(e: &Event, full: bool) -> String {
    let machine = if full || e.machine_id.len() <= 8 {
        e.machine_id.as_str()
    } else {
        &e.machine_id[..8]
    };
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    row(
        &e.time,
        &e.kind,
        &dash(&e.unit),
        &dash(machine),
        &dash(&e.detail),
        full,
    )
}

fn row(time: &str, kind: &str, unit: &str, machine: &str, detail: &str, full: bool) -> String {
    let machine_width = if full { 32 } else { 8 };
    format!("{time:<24}  {kind:<14}  {unit:<24}  {machine:<machine_width$}  {detail}")
}

/// Prints the events; the exit code: 0, or 1 when fleetd cannot be asked (or the stream broke).
pub async fn print(
    fleet: &Fleet,
    filter: &EventFilter,
    follow: bool,
    full: bool,
    no_legend: bool,
) -> i32 {
    let mut stdout = std::io::stdout();
    if !no_legend {
        let _ = writeln!(stdout, "{}", legend(full));
    }
    let printed = fleet
        .events(filter, follow, |e| {
            // A closed stdout (`fleetctl events -f | head`) ends the stream.
            writeln!(stdout, "{}", line(&e, full)).is_ok() && stdout.flush().is_ok()
        })
        .await;
    match printed {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error retrieving events: {e}");
            1
        }
    }
}

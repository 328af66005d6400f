//! `fleetctl plan`, `fleetctl start --dry-run` and `fleetctl why`: the engine's placement
//! reasoning, asked of fleetd (`/fleet/v1/plan`, `/fleet/v1/why/<unit>`), printed in fleet's
//! tab-padded style. Nothing here changes the registry.
//!
//! ```
//! use api::types::{MachineVerdict, UnitPlan};
//! let u = UnitPlan {
//!     name: "db.service".into(),
//!     action: "place".into(),
//!     machine_id: "m1".into(),
//!     reason: "goes to m1".into(),
//!     machines: vec![MachineVerdict { machine_id: "m1".into(), fits: true, verdict: "runs here".into() }],
//!     ..Default::default()
//! };
//! assert_eq!(
//!     fleetctl::explain::why_text(&u),
//!     "db.service would go to m1: goes to m1\nMACHINE\tFITS\tVERDICT\nm1\tyes\truns here\n"
//! );
//! ```

use crate::client::Fleet;
use crate::create;
use crate::output::Output;
use crate::tabwriter::format_go;
use api::types::{PlanAnswer, PlanRequest, Unit, UnitPlan};
use api::TargetState;

/// The `plan` table: UNIT, MACHINE, ACTION, REASON, then the other units the pass moves.
pub fn plan_table(answer: &PlanAnswer) -> String {
    let mut text = String::from("UNIT\tMACHINE\tACTION\tREASON\n");
    for u in &answer.units {
        let machine = if u.machine_id.is_empty() {
            "-"
        } else {
            u.machine_id.as_str()
        };
        let reason = match u.action.as_str() {
            "move" => format!("from {}: {}", u.machine_before, u.reason),
            _ => u.reason.clone(),
        };
        text.push_str(&format!("{}\t{machine}\t{}\t{reason}\n", u.name, u.action));
    }
    for m in &answer.moves {
        let (machine, action, reason) = match (m.from.is_empty(), m.to.is_empty()) {
            (true, false) => (
                m.to.as_str(),
                "place",
                "placed by the same pass".to_string(),
            ),
            (false, true) => (
                "-",
                "unplace",
                format!("taken off {} by the same pass", m.from),
            ),
            _ => (
                m.to.as_str(),
                "move",
                format!("from {}: moved by the same pass", m.from),
            ),
        };
        text.push_str(&format!("{}\t{machine}\t{action}\t{reason}\n", m.unit));
    }
    format_go(&text)
}

/// The `why` text: where the unit runs (or would) and why, then one line per machine.
pub fn why_text(u: &UnitPlan) -> String {
    let head = match u.action.as_str() {
        "keep" => format!("{} runs on {}: {}", u.name, u.machine_id, u.reason),
        "place" => format!("{} would go to {}: {}", u.name, u.machine_id, u.reason),
        "move" => format!(
            "{} would move from {} to {}: {}",
            u.name, u.machine_before, u.machine_id, u.reason
        ),
        "global" => format!("{} is global: {}", u.name, u.reason),
        _ => format!("{} cannot run: {}", u.name, u.reason),
    };
    let mut table = String::from("MACHINE\tFITS\tVERDICT\n");
    for v in &u.machines {
        let fits = if v.fits { "yes" } else { "no" };
        table.push_str(&format!("{}\t{fits}\t{}\n", v.machine_id, v.verdict));
    }
    format!("{head}\n{}", format_go(&table))
}

/// The request for `plan` (`start`: `false`) or `start --dry-run` (`true`) of `args`: an
/// argument with a local unit file is planned as that file; otherwise the unit of that name in
/// the registry, as it is or, for `start`, launched.
async fn request(fleet: &Fleet, args: &[String], start: bool) -> Result<PlanRequest, String> {
    let mut req = PlanRequest::default();
    for arg in args {
        let lookup = create::local_lookup(arg);
        if let Some(found) = lookup.local {
            let file = found
                .file
                .map_err(|e| format!("unable to read unit file {}: {e}", found.path.display()))?;
            // A file is planned as `start` would run it.
            req.files
                .push(Unit::new(&lookup.name, &file, TargetState::Launched));
            continue;
        }
        if !start {
            req.units.push(lookup.name);
            continue;
        }
        // `start` launches a submitted unit: plan it as launched.
        match fleet.unit(&lookup.name).await {
            Ok(Some(mut u)) => {
                u.desired_state = TargetState::Launched.to_string();
                req.files.push(u);
            }
            Ok(None) => {
                return Err(format!(
                    "unit {} not found: no local file {} and none in the registry; give the unit file's path",
                    lookup.name, lookup.arg
                ))
            }
            Err(e) => return Err(format!("error retrieving Unit({}): {e}", lookup.name)),
        }
    }
    Ok(req)
}

/// `fleetctl plan UNIT|FILE...` and `fleetctl start --dry-run FILE...`.
pub async fn plan(fleet: &Fleet, args: &[String], start: bool, out: &Output) -> i32 {
    if args.is_empty() {
        out.eprintln("No units given");
        return 0;
    }
    let req = match request(fleet, args, start).await {
        Ok(r) => r,
        Err(e) => {
            out.eprintln(&format!("Error: {e}"));
            return 1;
        }
    };
    match fleet.plan(&req).await {
        Ok(answer) => {
            out.println(plan_table(&answer).trim_end_matches('\n'));
            0
        }
        Err(e) => {
            out.eprintln(&format!("Error planning units: {e}"));
            1
        }
    }
}

/// `fleetctl why UNIT`.
pub async fn why(fleet: &Fleet, arg: &str, out: &Output) -> i32 {
    let name = unit::mangle(&create::with_default_type(arg));
    match fleet.why(&name).await {
        Ok(answer) => match answer.units.first() {
            Some(u) => {
                out.println(why_text(u).trim_end_matches('\n'));
                0
            }
            None => {
                out.eprintln(&format!("Error: fleetd explained nothing about {name}"));
                1
            }
        },
        Err(e) => {
            out.eprintln(&format!("Error explaining {name}: {e}"));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::types::{MachineVerdict, PlanMove};

    #[test]
    fn plan_table_lists_units_then_what_else_moves() {
        let answer = PlanAnswer {
            units: vec![
                UnitPlan {
                    name: "web1.service".into(),
                    action: "move".into(),
                    machine_before: "m1".into(),
                    machine_id: "m2".into(),
                    reason: "goes to m2".into(),
                    ..Default::default()
                },
                UnitPlan {
                    name: "gpu.service".into(),
                    action: "none".into(),
                    reason: "no machine matches MachineMetadata region=north".into(),
                    ..Default::default()
                },
            ],
            moves: vec![PlanMove {
                unit: "web2.service".into(),
                from: "m3".into(),
                to: String::new(),
            }],
        };
        assert_eq!(
            plan_table(&answer),
            "UNIT\t\tMACHINE\tACTION\tREASON\n\
             web1.service\tm2\tmove\tfrom m1: goes to m2\n\
             gpu.service\t-\tnone\tno machine matches MachineMetadata region=north\n\
             web2.service\t-\tunplace\ttaken off m3 by the same pass\n"
        );
    }

    #[test]
    fn why_says_where_or_why_not_then_each_machine() {
        let u = UnitPlan {
            name: "gpu.service".into(),
            action: "none".into(),
            reason: "no machine matches MachineMetadata region=north".into(),
            machines: vec![MachineVerdict {
                machine_id: "m1".into(),
                fits: false,
                verdict: "MachineMetadata wants region=north, machine has region=east".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            why_text(&u),
            "gpu.service cannot run: no machine matches MachineMetadata region=north\n\
             MACHINE\tFITS\tVERDICT\n\
             m1\tno\tMachineMetadata wants region=north, machine has region=east\n"
        );
    }
}

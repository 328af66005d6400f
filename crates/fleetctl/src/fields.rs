//! The columns of `list-units`, `list-unit-files` and `list-machines`: which fields exist, what
//! each cell shows, and the table text (run through Go's tabwriter layout).
//!
//! ```
//! use fleetctl::fields::{parse_fields, UNIT_FILE_FIELDS};
//! assert_eq!(parse_fields("unit,hash", &UNIT_FILE_FIELDS).unwrap(), ["unit", "hash"]);
//! assert!(parse_fields("unit,nope", &UNIT_FILE_FIELDS).is_err());
//! ```

use api::types::{Machine, Unit, UnitState};
use std::collections::BTreeMap;

/// The fields a table accepts and the ones it shows by default.
#[derive(Clone, Copy, Debug)]
pub struct FieldSet {
    pub valid: &'static [&'static str],
    pub default: &'static str,
}

/// `list-units`: one row per (unit, machine) state.
pub const UNIT_FIELDS: FieldSet = FieldSet {
    valid: &["active", "hash", "load", "machine", "sub", "unit"],
    default: "unit,machine,active,sub",
};

/// `list-unit-files`: one row per unit. `tmachine` is fleet's deprecated alias of `target`;
/// `reason` is ours: why the engine cannot place the unit.
pub const UNIT_FILE_FIELDS: FieldSet = FieldSet {
    valid: &[
        "desc", "dstate", "global", "hash", "reason", "state", "target", "tmachine", "unit",
    ],
    default: "unit,hash,dstate,state,target",
};

/// `list-machines`: one row per machine. `state` is ours (`active` or `drained`), shown by
/// default only while some machine is drained ([`MACHINE_FIELDS_DRAINED`]), so that fleet's
/// table stays as it was otherwise.
pub const MACHINE_FIELDS: FieldSet = FieldSet {
    valid: &["ip", "machine", "metadata", "state"],
    default: "machine,ip,metadata",
};

/// [`MACHINE_FIELDS`] while some machine is drained.
pub const MACHINE_FIELDS_DRAINED: FieldSet = FieldSet {
    default: "machine,ip,metadata,state",
    ..MACHINE_FIELDS
};

/// Splits a `--fields` value and checks every field, with fleet's messages.
pub fn parse_fields(spec: &str, set: &FieldSet) -> Result<Vec<String>, String> {
    if spec.is_empty() {
        return Err("Must define output format".to_string());
    }
    spec.split(',')
        .map(|f| {
            if set.valid.contains(&f) {
                Ok(f.to_string())
            } else {
                Err(format!(
                    "Invalid key in output format: {f:?} (valid fields: {})",
                    set.valid.join(",")
                ))
            }
        })
        .collect()
}

/// The cluster's machines by id, for legends with IPs.
#[derive(Clone, Debug, Default)]
pub struct Machines(pub BTreeMap<String, Machine>);

impl Machines {
    pub fn new(list: Vec<Machine>) -> Machines {
        Machines(list.into_iter().map(|m| (m.id.clone(), m)).collect())
    }

    /// fleet's `machineFullLegend`: `<first 8 characters>...` (the whole id with `full`), then
    /// `/<IP>` when the machine is known and has one.
    pub fn legend(&self, id: &str, full: bool) -> String {
        let mut legend = id_legend(id, full);
        if let Some(m) = self.0.get(id) {
            if !m.primary_ip.is_empty() {
                legend.push('/');
                legend.push_str(&m.primary_ip);
            }
        }
        legend
    }
}

/// fleet's `machineIDLegend`.
pub fn id_legend(id: &str, full: bool) -> String {
    if full {
        id.to_string()
    } else {
        format!("{}...", id.chars().take(8).collect::<String>())
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

/// Whether a unit's options make it global (`[X-Fleet] Global=true`).
pub fn is_global(unit: &Unit) -> bool {
    unit::Requirements::from_unit(&unit.file(), &unit.name).global
}

/// One `list-units` cell.
pub fn unit_state_cell(field: &str, s: &UnitState, machines: &Machines, full: bool) -> String {
    match field {
        "unit" => s.name.clone(),
        "load" => or_dash(&s.systemd_load_state),
        "active" => or_dash(&s.systemd_active_state),
        "sub" => or_dash(&s.systemd_sub_state),
        "hash" if full || s.hash.is_empty() => or_dash(&s.hash),
        "hash" => s.hash.chars().take(7).collect(),
        "machine" if s.machine_id.is_empty() => "-".to_string(),
        "machine" => machines.legend(&s.machine_id, full),
        _ => "-".to_string(),
    }
}

/// One `list-unit-files` cell.
pub fn unit_file_cell(field: &str, u: &Unit, machines: &Machines, full: bool) -> String {
    match field {
        "unit" => u.name.clone(),
        "global" => is_global(u).to_string(),
        "dstate" => or_dash(&u.desired_state),
        "state" if is_global(u) => "-".to_string(),
        "state" => or_dash(&u.current_state),
        "target" | "tmachine" if is_global(u) => "global".to_string(),
        "target" | "tmachine" if u.machine_id.is_empty() => "-".to_string(),
        "target" | "tmachine" => machines.legend(&u.machine_id, full),
        "hash" => {
            let hash = u.file().hash();
            if full {
                hash.to_string()
            } else {
                hash.short()
            }
        }
        "desc" => or_dash(u.file().description().unwrap_or("")),
        "reason" => or_dash(u.reason.as_deref().unwrap_or("")),
        _ => "-".to_string(),
    }
}

/// One `list-machines` cell; metadata is `k=v,k2=v2` sorted by key.
pub fn machine_cell(field: &str, m: &Machine, drained: bool, full: bool) -> String {
    match field {
        "machine" => id_legend(&m.id, full),
        "state" if drained => "drained".to_string(),
        "state" => "active".to_string(),
        "ip" => or_dash(&m.primary_ip),
        "metadata" if m.metadata.is_empty() => "-".to_string(),
        "metadata" => m
            .metadata
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".to_string(),
    }
}

/// A cell may not carry the table's separators: a tab or newline inside one (a description
/// with a continuation line) would shift every column after it.
fn clean(cell: String) -> String {
    if cell.contains(['\t', '\n', '\r']) {
        cell.replace(['\t', '\n', '\r'], " ")
    } else {
        cell
    }
}

/// The table text: the legend (upper-cased field names) unless `no_legend`, then the rows, laid
/// out as fleetctl's tabwriter did.
pub fn render(fields: &[String], rows: Vec<Vec<String>>, no_legend: bool) -> String {
    let mut text = String::new();
    if !no_legend {
        text.push_str(&fields.join("\t").to_uppercase());
        text.push('\n');
    }
    for row in rows {
        let cells: Vec<String> = row.into_iter().map(clean).collect();
        text.push_str(&cells.join("\t"));
        text.push('\n');
    }
    crate::tabwriter::format_go(&text)
}

/// The `list-units` table; states sorted by (unit, machine).
pub fn units_table(
    mut states: Vec<UnitState>,
    machines: &Machines,
    fields: &[String],
    full: bool,
    no_legend: bool,
) -> String {
    states.sort_by(|a, b| (&a.name, &a.machine_id).cmp(&(&b.name, &b.machine_id)));
    let rows = states
        .iter()
        .map(|s| {
            fields
                .iter()
                .map(|f| unit_state_cell(f, s, machines, full))
                .collect()
        })
        .collect();
    render(fields, rows, no_legend)
}

/// The `list-unit-files` table; units sorted by name.
pub fn unit_files_table(
    mut units: Vec<Unit>,
    machines: &Machines,
    fields: &[String],
    full: bool,
    no_legend: bool,
) -> String {
    units.sort_by(|a, b| a.name.cmp(&b.name));
    let rows = units
        .iter()
        .map(|u| {
            fields
                .iter()
                .map(|f| unit_file_cell(f, u, machines, full))
                .collect()
        })
        .collect();
    render(fields, rows, no_legend)
}

/// The `list-machines` table; machines sorted by id.
/// The `list-machines` table; machines sorted by id. `drained` holds the drained machines' ids.
pub fn machines_table(
    mut machines: Vec<Machine>,
    drained: &std::collections::BTreeSet<String>,
    fields: &[String],
    full: bool,
    no_legend: bool,
) -> String {
    machines.sort_by(|a, b| a.id.cmp(&b.id));
    let rows = machines
        .iter()
        .map(|m| {
            let d = drained.contains(&m.id);
            fields.iter().map(|f| machine_cell(f, m, d, full)).collect()
        })
        .collect();
    render(fields, rows, no_legend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::types::UnitOption;

    const M1: &str = "113f16a7b6e24a2bbdbc8d6c3ee3a0b3";
    const M2: &str = "e55c0aeb1a1c4b3c8e8f6d1a2b3c4d5e";

    fn machine(id: &str, ip: &str, meta: &[(&str, &str)]) -> Machine {
        Machine {
            id: id.into(),
            primary_ip: ip.into(),
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn opt(section: &str, name: &str, value: &str) -> UnitOption {
        UnitOption {
            section: section.into(),
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn fields_parse_with_fleets_messages() {
        assert_eq!(
            parse_fields(UNIT_FIELDS.default, &UNIT_FIELDS).unwrap(),
            ["unit", "machine", "active", "sub"]
        );
        assert_eq!(
            parse_fields("", &UNIT_FIELDS).unwrap_err(),
            "Must define output format"
        );
        let err = parse_fields("unit,,sub", &UNIT_FIELDS).unwrap_err();
        assert!(
            err.starts_with("Invalid key in output format: \"\""),
            "{err}"
        );
        assert!(parse_fields("reason", &UNIT_FILE_FIELDS).is_ok());
        assert!(parse_fields("reason", &UNIT_FIELDS).is_err());
        assert!(parse_fields("tmachine,desc,global", &UNIT_FILE_FIELDS).is_ok());
        for set in [UNIT_FIELDS, UNIT_FILE_FIELDS, MACHINE_FIELDS] {
            assert!(parse_fields(set.default, &set).is_ok());
            let mut sorted = set.valid.to_vec();
            sorted.sort();
            assert_eq!(
                sorted, set.valid,
                "valid fields listed sorted, as fleet printed them"
            );
        }
    }

    #[test]
    fn machines_table_golden() {
        let machines = vec![
            machine(M2, "", &[]),
            machine(M1, "172.17.8.101", &[("region", "us-west"), ("az", "b")]),
        ];
        let fields = parse_fields(MACHINE_FIELDS.default, &MACHINE_FIELDS).unwrap();
        // MACHINE: widest 11 ("113f16a7...") + 1 -> 16; IP: widest 12 + 1 -> 16.
        let expected = "MACHINE\t\tIP\t\tMETADATA\n\
                        113f16a7...\t172.17.8.101\taz=b,region=us-west\n\
                        e55c0aeb...\t-\t\t-\n";
        let none = std::collections::BTreeSet::new();
        assert_eq!(
            machines_table(machines.clone(), &none, &fields, false, false),
            expected
        );
        // --full: the 32-character id + 1 -> 40.
        let full = format!("{M1}\t172.17.8.101\taz=b,region=us-west\n{M2}\t-\t\t-\n");
        assert_eq!(
            machines_table(machines.clone(), &none, &fields, true, true),
            full
        );
        // While a machine is drained, the default shows the state.
        let fields = parse_fields(MACHINE_FIELDS_DRAINED.default, &MACHINE_FIELDS).unwrap();
        let drained = std::collections::BTreeSet::from([M2.to_string()]);
        let expected = "MACHINE\t\tIP\t\tMETADATA\t\tSTATE\n\
                        113f16a7...\t172.17.8.101\taz=b,region=us-west\tactive\n\
                        e55c0aeb...\t-\t\t-\t\t\tdrained\n";
        assert_eq!(
            machines_table(machines, &drained, &fields, false, false),
            expected
        );
    }

    #[test]
    fn units_table_golden() {
        let machines = Machines::new(vec![machine(M1, "10.0.0.1", &[])]);
        let state = |name: &str, m: &str, active: &str| UnitState {
            name: name.into(),
            machine_id: m.into(),
            hash: "1c6fb6f3684bafb0c173d8b8b957ceff031180c1".into(),
            systemd_load_state: "loaded".into(),
            systemd_active_state: active.into(),
            systemd_sub_state: String::new(),
            reason: None,
        };
        let states = vec![
            state("web@1.service", M2, "active"),
            state("hello.service", M1, "inactive"),
        ];
        let fields = parse_fields("unit,machine,active,sub,hash", &UNIT_FIELDS).unwrap();
        // UNIT 13+1 -> 16; MACHINE "113f16a7.../10.0.0.1" 20+1 -> 24; ACTIVE 8+1 -> 16; SUB 3+1 -> 8.
        let expected = "UNIT\t\tMACHINE\t\t\tACTIVE\t\tSUB\tHASH\n\
                        hello.service\t113f16a7.../10.0.0.1\tinactive\t-\t1c6fb6f\n\
                        web@1.service\te55c0aeb...\t\tactive\t\t-\t1c6fb6f\n";
        assert_eq!(
            units_table(states, &machines, &fields, false, false),
            expected
        );
    }

    #[test]
    fn unit_files_cells() {
        let machines = Machines::new(vec![machine(M1, "10.0.0.1", &[])]);
        let mut u = Unit {
            name: "hello.service".into(),
            desired_state: "launched".into(),
            current_state: "inactive".into(),
            options: vec![
                opt("Unit", "Description", "Hello"),
                opt("Service", "ExecStart", "/bin/sleep 100"),
            ],
            ..Unit::default()
        };
        let cell = |f: &str, u: &Unit, full| unit_file_cell(f, u, &machines, full);
        assert_eq!(cell("target", &u, false), "-");
        assert_eq!(cell("reason", &u, false), "-");
        assert_eq!(cell("desc", &u, false), "Hello");
        assert_eq!(cell("global", &u, false), "false");
        assert_eq!(cell("hash", &u, false).len(), 7);
        assert_eq!(cell("hash", &u, true), u.file().hash().to_string());
        u.reason = Some("no machine matches MachineMetadata".into());
        assert_eq!(
            cell("reason", &u, false),
            "no machine matches MachineMetadata"
        );
        u.machine_id = M1.into();
        assert_eq!(cell("target", &u, false), "113f16a7.../10.0.0.1");
        assert_eq!(cell("tmachine", &u, true), format!("{M1}/10.0.0.1"));
        u.options.push(opt("X-Fleet", "Global", "true"));
        assert_eq!(cell("target", &u, false), "global");
        assert_eq!(cell("state", &u, false), "-");
        assert_eq!(cell("global", &u, false), "true");
        u.options.clear();
        assert_eq!(cell("desc", &u, false), "-");
    }

    #[test]
    fn separators_inside_cells_do_not_break_the_table() {
        let out = render(
            &["unit".to_string(), "desc".to_string()],
            vec![vec!["a.service".into(), "two\tparts\nand lines".into()]],
            true,
        );
        assert_eq!(out, "a.service\ttwo parts and lines\n");
    }
}

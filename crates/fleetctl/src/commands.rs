//! The commands: I/O around the pure decisions in [`crate::create`], [`crate::plan`],
//! [`crate::wait`] and [`crate::fields`]. Each returns the process exit code.

use crate::cli::{Block, List, Replace};
use crate::client::Fleet;
use crate::create::{self, Action, Message, Purpose};
use crate::fields::{self, FieldSet, Machines};
use crate::output::Output;
use crate::plan::{self, Goal, Step};
use crate::wait::{self, Limits};
use api::types::Unit;
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::time::Instant;

pub const SIGN_WARNING: &str =
    "WARNING: The signed/verified units feature is DEPRECATED and cannot be used.";

fn say(out: &Output, m: &Message) {
    match m {
        Message::Stdout(t) => out.println(t),
        Message::Stderr(t) => out.eprintln(t),
    }
}

fn limits(block: &Block) -> Limits {
    Limits {
        attempts: block.block_attempts,
        deadline: (block.timeout > 0.0)
            .then(|| Instant::now() + std::time::Duration::from_secs_f64(block.timeout)),
    }
}

/// Mangled names in the order given, without repeats.
pub fn names(args: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in args {
        let n = unit::mangle(a);
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// API requests one command has in flight at once (fleet's fleetctl sent one at a time).
const CONCURRENT_REQUESTS: usize = 64;

/// What [`lazy_create`] leaves: every unit named, and the ones it created in the command's
/// final desired state, as they were PUT (so they need not be read back).
pub struct Created {
    pub names: Vec<String>,
    pub direct: Vec<Unit>,
}

/// fleet's lazy creation for `submit`, `load` and `start`: every argument ends up in the
/// registry (or the command fails at the first that cannot). A new unit is created in the
/// command's final desired state ([`Purpose::creation_state`]); a replaced one is created
/// `inactive` and waited for until it is.
pub async fn lazy_create(
    fleet: &Fleet,
    args: &[String],
    purpose: Purpose,
    replace: &Replace,
    block: &Block,
    out: &Arc<Output>,
) -> Result<Created, ()> {
    if replace.sign {
        out.eprintln(SIGN_WARNING);
    }
    // Every unit is looked up (side by side) and decided on, in argument order, before any is
    // created: a bad file anywhere stops the command with nothing changed.
    let lookups: Vec<Result<create::Lookup, String>> = futures::stream::iter(args)
        .map(|arg| create::gather(fleet, arg))
        .buffered(CONCURRENT_REQUESTS)
        .collect()
        .await;
    let mut to_create: Vec<Unit> = Vec::new();
    let mut replaced: HashSet<String> = HashSet::new();
    let mut names: Vec<String> = Vec::new();
    // Global units given with --replace: a rollout of theirs (`start --replace --rolling`)
    // is dropped, so that every machine runs the content the unit has.
    let mut everywhere: Vec<String> = Vec::new();
    for lookup in lookups {
        let lookup = lookup.map_err(|e| out.eprintln(&e))?;
        if replace.replace
            && lookup
                .registry
                .as_ref()
                .is_some_and(crate::fields::is_global)
        {
            everywhere.push(lookup.name.clone());
        }
        let decision =
            create::decide(purpose, replace.replace, &lookup).map_err(|e| out.eprintln(&e))?;
        decision.messages.iter().for_each(|m| say(out, m));
        if let Action::Create { file, replace } = decision.action {
            // The same unit named twice is created once.
            if !to_create.iter().any(|u| u.name == lookup.name) {
                let warnings =
                    create::validate(&lookup.name, &file).map_err(|e| out.eprintln(&e))?;
                warnings.iter().for_each(|m| say(out, m));
                to_create.push(create::new_unit(&lookup.name, &file, purpose, replace));
                if replace {
                    replaced.insert(lookup.name.clone());
                }
            }
        }
        if !names.contains(&lookup.name) {
            names.push(lookup.name);
        }
    }
    // A unit that requires another of this batch is created after it: created together, the
    // engine could place and start it before the unit it requires exists.
    for wave in crate::deps::creation_waves(&to_create) {
        let results: Vec<Result<(), String>> = futures::stream::iter(&wave)
            .map(|&i| {
                let unit = &to_create[i];
                async move {
                    fleet
                        .create_unit(unit)
                        .await
                        .map_err(|e| format!("failed creating unit {}: {e}", unit.name))
                }
            })
            .buffered(CONCURRENT_REQUESTS)
            .collect()
            .await;
        for result in results {
            result.map_err(|e| out.eprintln(&e))?;
        }
    }
    for name in &everywhere {
        match fleet.delete_rollout(name).await {
            Ok(true) => say(
                out,
                &Message::Stdout(format!(
                    "Rollout of {name} dropped: every machine runs its content now"
                )),
            ),
            Ok(false) => {}
            Err(e) => {
                out.eprintln(&format!("failed dropping the rollout of {name} (some machines may keep its old content): {e}; run fleetctl start --replace {name} again"));
                return Err(());
            }
        }
    }
    let (waited, direct): (Vec<Unit>, Vec<Unit>) = to_create
        .into_iter()
        .partition(|u| replaced.contains(&u.name));
    // fleet's line for a created unit: a unit just created is inactive everywhere, whatever
    // its desired state (no machine has it yet).
    for u in &direct {
        out.println(&format!("Unit {} inactive", u.name));
    }
    // A replaced unit is taken down before it is started again with its new content (even
    // with --no-block: the new content must not race the old).
    let plans = waited
        .into_iter()
        .map(|u| (u.name, vec![Step::Wait(Goal::Inactive)]))
        .collect();
    if !wait::run_all(fleet, plans, limits(block), out.clone()).await {
        out.eprintln("Error creating units: one or more units did not become inactive");
        return Err(());
    }
    Ok(Created { names, direct })
}

/// The units of `args` that are in the registry, in argument order; the missing ones are
/// reported. `None` when none is there (fleet's "Units not found in registry", exit 0).
async fn find_units(fleet: &Fleet, args: &[String], out: &Output) -> Result<Vec<Unit>, i32> {
    let all = fleet.units().await.map_err(|e| {
        out.eprintln(&format!(
            "Error retrieving list of units from repository: {e}"
        ));
        1
    })?;
    let mut found = Vec::new();
    for name in names(args) {
        match all.iter().find(|u| u.name == name) {
            Some(u) => found.push(u.clone()),
            None => out.eprintln(&format!("Unit {name} not found in registry")),
        }
    }
    if found.is_empty() {
        out.eprintln("Units not found in registry");
        return Err(0);
    }
    Ok(found)
}

/// Plans every unit first, so that a unit that cannot do what was asked stops the command
/// before anything is changed; then runs the plans concurrently.
async fn execute(
    fleet: &Fleet,
    units: &[Unit],
    planner: impl Fn(&Unit) -> Result<Vec<Step>, String>,
    verb: &'static str,
    block: &Block,
    limits: Limits,
    out: &Arc<Output>,
) -> i32 {
    let mut plans = Vec::new();
    for u in units {
        match planner(u) {
            Ok(steps) if block.no_block => {
                plans.push((u.name.clone(), plan::without_waits(steps, verb)))
            }
            Ok(steps) => plans.push((u.name.clone(), steps)),
            Err(e) => {
                out.eprintln(&e);
                return 1;
            }
        }
    }
    if wait::run_all(fleet, plans, limits, out.clone()).await {
        0
    } else {
        1
    }
}

/// Current units by name (after lazy creation).
async fn fetch(fleet: &Fleet, names: &[String], out: &Output) -> Result<Vec<Unit>, i32> {
    let found: Vec<_> = futures::stream::iter(names)
        .map(|name| async move { (name, fleet.unit(name).await) })
        .buffered(CONCURRENT_REQUESTS)
        .collect()
        .await;
    let mut units = Vec::new();
    for (name, read) in found {
        match read {
            Ok(Some(u)) => units.push(u),
            Ok(None) => {
                out.eprintln(&format!("unable to find unit {name}"));
                return Err(1);
            }
            Err(e) => {
                out.eprintln(&format!("error retrieving unit {name} from registry: {e}"));
                return Err(1);
            }
        }
    }
    Ok(units)
}

fn no_units(args: &[String], out: &Output) -> bool {
    if args.is_empty() {
        out.eprintln("No units given");
        true
    } else {
        false
    }
}

pub async fn submit(fleet: &Fleet, args: &[String], replace: &Replace, out: Arc<Output>) -> i32 {
    if no_units(args, &out) {
        return 0;
    }
    match lazy_create(
        fleet,
        args,
        Purpose::Submit,
        replace,
        &Block::default(),
        &out,
    )
    .await
    {
        Ok(_) => 0,
        Err(()) => 1,
    }
}

/// `load` and `start`.
pub async fn load_or_start(
    fleet: &Fleet,
    args: &[String],
    block: &Block,
    replace: &Replace,
    start: bool,
    out: Arc<Output>,
) -> i32 {
    if no_units(args, &out) {
        return 0;
    }
    let limits = limits(block);
    let purpose = if start { Purpose::Start } else { Purpose::Load };
    let Ok(created) = lazy_create(fleet, args, purpose, replace, block, &out).await else {
        return 1;
    };
    // Units created just now are as they were PUT; the others are read again, since lazy
    // creation may have replaced or kept them.
    let mut direct: HashMap<String, Unit> = created
        .direct
        .into_iter()
        .map(|u| (u.name.clone(), u))
        .collect();
    let others: Vec<String> = created
        .names
        .iter()
        .filter(|n| !direct.contains_key(*n))
        .cloned()
        .collect();
    let mut read = match fetch(fleet, &others, &out).await {
        Ok(u) => u.into_iter(),
        Err(code) => return code,
    };
    // In argument order: `fetch` returns `others` in theirs.
    let units: Vec<Unit> = created
        .names
        .iter()
        .filter_map(|n| direct.remove(n).or_else(|| read.next()))
        .collect();
    if start {
        execute(fleet, &units, plan::start, "start", block, limits, &out).await
    } else {
        execute(fleet, &units, plan::load, "load", block, limits, &out).await
    }
}

/// What [`change`] does to units already in the registry: one of the commands of the same
/// names, as [`crate::cli::Command`] parsed them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Stop,
    Unload,
    Destroy,
    Restart,
}

/// `stop`, `unload`, `destroy` and `restart`: units already in the registry.
pub async fn change(
    fleet: &Fleet,
    args: &[String],
    block: &Block,
    what: Change,
    out: Arc<Output>,
) -> i32 {
    if no_units(args, &out) {
        return 0;
    }
    let limits = limits(block);
    let units = match find_units(fleet, args, &out).await {
        Ok(u) => u,
        Err(code) => return code,
    };
    match what {
        Change::Stop => execute(fleet, &units, plan::stop, "stop", block, limits, &out).await,
        Change::Unload => {
            execute(
                fleet,
                &units,
                |u| Ok(plan::unload(u)),
                "unload",
                block,
                limits,
                &out,
            )
            .await
        }
        Change::Destroy => {
            execute(
                fleet,
                &units,
                |u| Ok(plan::destroy(u)),
                "destroy",
                block,
                limits,
                &out,
            )
            .await
        }
        // What `--no-block` prints is the start's line: "Triggered unit foo.service start".
        Change::Restart => {
            execute(fleet, &units, plan::restart, "start", block, limits, &out).await
        }
    }
}

fn fields_or_fail(list: &List, set: &FieldSet) -> Result<Vec<String>, i32> {
    let spec = list.fields.as_deref().unwrap_or(set.default);
    fields::parse_fields(spec, set).map_err(|e| {
        eprintln!("{e}");
        1
    })
}

async fn machines_if(fleet: &Fleet, needed: bool) -> Machines {
    if needed {
        // As fleet: machines only add IPs to legends; failing to list them is not fatal.
        Machines::new(fleet.machines().await.unwrap_or_default())
    } else {
        Machines::default()
    }
}

pub async fn list_units(fleet: &Fleet, list: &List) -> i32 {
    let fields = match fields_or_fail(list, &fields::UNIT_FIELDS) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let states = match fleet.unit_states(None).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("Error retrieving list of units from repository: {e}");
            return 1;
        }
    };
    let machines = machines_if(fleet, fields.iter().any(|f| f == "machine")).await;
    print!(
        "{}",
        fields::units_table(states, &machines, &fields, list.full, list.no_legend)
    );
    0
}

pub async fn list_unit_files(fleet: &Fleet, list: &List) -> i32 {
    let fields = match fields_or_fail(list, &fields::UNIT_FILE_FIELDS) {
        Ok(f) => f,
        Err(code) => return code,
    };
    if fields.iter().any(|f| f == "tmachine") {
        eprintln!("WARNING: The \"tmachine\" field is deprecated. Use \"target\" instead");
    }
    let units = match fleet.units().await {
        Ok(u) => u,
        Err(e) => {
            eprintln!("Error retrieving list of units from repository: {e}");
            return 1;
        }
    };
    let needed = fields.iter().any(|f| f == "target" || f == "tmachine");
    let machines = machines_if(fleet, needed).await;
    print!(
        "{}",
        fields::unit_files_table(units, &machines, &fields, list.full, list.no_legend)
    );
    0
}

pub async fn list_machines(fleet: &Fleet, list: &List) -> i32 {
    // Fields given are checked before fleetd is asked anything, as fleet does.
    if list.fields.is_some() {
        if let Err(code) = fields_or_fail(list, &fields::MACHINE_FIELDS) {
            return code;
        }
    }
    // Machines first: an unreachable fleetd is reported as fleet reports it, after one wait.
    let machines = match fleet.machines().await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("Error retrieving list of active machines: {e}");
            return 1;
        }
    };
    // Drain is an extension: a server without it (fleet's own) answers as if none is drained;
    // any other failure to read it leaves the state out, unless it was asked for.
    let asked = list
        .fields
        .as_deref()
        .is_some_and(|f| f.split(',').any(|f| f == "state"));
    let drained: std::collections::BTreeSet<String> = match fleet.drains().await {
        Ok(d) => d.into_iter().map(|m| m.machine_id).collect(),
        Err(e) if asked => {
            eprintln!("Error retrieving the drained machines: {e}");
            return 1;
        }
        Err(_) => Default::default(),
    };
    let set = if drained.is_empty() {
        fields::MACHINE_FIELDS
    } else {
        fields::MACHINE_FIELDS_DRAINED
    };
    let fields = match fields_or_fail(list, &set) {
        Ok(f) => f,
        Err(code) => return code,
    };
    print!(
        "{}",
        fields::machines_table(machines, &drained, &fields, list.full, list.no_legend)
    );
    0
}

pub async fn cat(fleet: &Fleet, args: &[String]) -> i32 {
    let [arg] = args else {
        eprintln!("One unit file must be provided");
        return 1;
    };
    let name = unit::mangle(arg);
    match fleet.unit(&name).await {
        Ok(Some(u)) => {
            print!("{}", u.file().serialize());
            0
        }
        Ok(None) => {
            eprintln!("Unit {name} not found");
            1
        }
        Err(e) => {
            eprintln!("Error retrieving Unit {name}: {e}");
            1
        }
    }
}

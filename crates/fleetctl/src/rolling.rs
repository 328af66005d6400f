//! `fleetctl start --replace --rolling[=N] FILE...`: gives running units new content N at a
//! time. Each batch is replaced (one PUT a unit, its desired state kept, so the agent of its
//! machine unloads the old file and starts the new one), then waited for until every unit of
//! it is active on its machine with the new hash, then (with `--health-cmd`) checked, before
//! the next batch is touched. The first failure stops the rollout: the units not reached yet
//! keep running their old content.
//!
//! A unit's own `ExecStartPost=` already gates "active" (systemd, and our process supervisor,
//! report a unit active only once it has passed), so it is the health gate that travels with
//! the unit; `--health-cmd` is the one the operator brings, run here with `UNIT`, `MACHINE`
//! and `MACHINE_IP` set, retried until it passes or the batch's time is up.
//!
//! A global unit is rolled machine by machine (fleet runs one content of a global unit on
//! every machine, so a plain replace restarts it everywhere at once: fleet's issue 960). A
//! rollout record (`/fleet/v1/rollouts/UNIT`) names the old and new content and the machines
//! allowed the new one; the agents of the others keep the old content. [`run`] creates it
//! allowing none, gives the unit its new content, then allows the machines that run the unit a
//! batch at a time, the same [`Rollout`] machine ordering the work with machines in place of
//! units ([`Rollout::machines`]), and drops the record once all run the new content. A failure
//! leaves the record: the same command resumes it, a plain `start --replace` drops it.
//!
//! [`select`] picks the units and their new files and [`Rollout`] orders the work (both
//! pure: states observed go in, the next request comes out); [`run`] is the I/O around them.

use crate::client::Fleet;
use crate::create::{self, Found};
use crate::fields::{is_global, Machines};
use crate::output::Output;
use api::types::{Unit, UnitState};
use api::TargetState;
use clap::Args;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;
use unit::{UnitFile, UnitName};

/// `start`'s flags for a rolling replace.
#[derive(Args, Debug, Clone, Default)]
pub struct Rolling {
    /// With --replace: replace the running units matching the arguments N at a time (default
    /// 1), each batch active with its new content before the next starts; stops at the first
    /// failure, leaving the rest on their old content. An argument is a unit file, a template
    /// file (web@.service: every running instance) or a glob of unit names ('web@*.service');
    /// a global unit is replaced N machines at a time
    #[arg(long, value_name = "N", num_args = 0..=1, require_equals = true,
          default_missing_value = "1", value_parser = clap::value_parser!(u32).range(1..))]
    pub rolling: Option<u32>,

    /// With --rolling: a command that must succeed for each replaced unit before the next
    /// batch; run here by `sh -c` with UNIT, MACHINE and MACHINE_IP set, retried until it
    /// passes or --batch-timeout is up
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,

    /// With --rolling: seconds one batch may take to be active (and pass --health-cmd)
    #[arg(long, value_name = "SECONDS", default_value = "300", value_parser = crate::cli::positive_seconds)]
    pub batch_timeout: f64,
}

/// One unit to replace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub file: UnitFile,
    /// The hash of `file`, as unit states publish it (hex).
    pub hash: String,
    /// The desired state the unit has, kept by the replacement.
    pub desired: TargetState,
}

/// What a rollout will do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub targets: Vec<Target>,
    /// Units matched but left alone, and warnings, for stderr.
    pub notes: Vec<String>,
    /// Templates in the registry whose local file was used: given the new content once every
    /// instance runs it, so that instances started later get it too.
    pub templates: Vec<(String, UnitFile)>,
    /// Global units, rolled machine by machine after the others.
    pub globals: Vec<GlobalTarget>,
}

/// A global unit to roll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalTarget {
    pub target: Target,
    /// The hash of the content the unit has in the registry (the new one's when a rollout of
    /// it stopped and is resumed).
    pub current: String,
}

/// The glob of unit names an argument stands for, and the directory its local files are in:
/// `units/web@.service` -> every instance `web@*.service`, `units/web@1` -> `web@1.service`,
/// `'units/web@*.service'` as given.
pub fn pattern(arg: &str) -> (String, PathBuf) {
    let arg = create::with_default_type(arg);
    let dir = Path::new(&arg)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let name = unit::mangle(&arg);
    let pattern = if unit::is_template(&name) {
        name.replacen("@.", "@*.", 1)
    } else {
        name
    };
    (pattern, dir)
}

/// A piece of a name for ordering: runs of digits compare as numbers, so that `web@10`
/// comes after `web@9`. Hand-written: a few lines, where a crate would be a dependency for one
/// comparison.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Text(String),
    /// The value (a run too long for a u128 counts as the largest), then the digits.
    Number(u128, String),
}

fn natural_key(name: &str) -> Vec<Part> {
    let mut key = Vec::new();
    let mut chars = name.chars().peekable();
    while let Some(&c) = chars.peek() {
        let digit = c.is_ascii_digit();
        let mut run = String::new();
        while let Some(d) = chars.next_if(|d| d.is_ascii_digit() == digit) {
            run.push(d);
        }
        key.push(if digit {
            Part::Number(run.parse().unwrap_or(u128::MAX), run)
        } else {
            Part::Text(run)
        });
    }
    key
}

/// Picks the units `args` name among the registry's `units`, with the new file of each from
/// `local` (what [`create::local_lookup`] finds for a path: the file, else the template
/// beside it). Only units whose desired state is `launched` are rolled; others are noted and
/// left. Global units go to [`Selection::globals`], even with content they already have (a
/// stopped rollout of it is resumed). Errors (nothing changed yet): an argument matching no
/// unit, a unit without a local file, a bad file, a unit that would change between global and
/// not.
pub fn select(
    args: &[String],
    units: &[Unit],
    local: impl Fn(&str) -> Option<Found>,
) -> Result<Selection, String> {
    let mut sel = Selection::default();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for arg in args {
        let (pattern, dir) = pattern(arg);
        let mut matched: Vec<&Unit> = units
            .iter()
            .filter(|u| !unit::is_template(&u.name) && unit::glob::path_match(&pattern, &u.name))
            .collect();
        if matched.is_empty() {
            return Err(format!(
                "no unit in the registry matches {arg} ({pattern}): a rolling replace changes running units; start new ones with fleetctl start"
            ));
        }
        matched.sort_by_cached_key(|u| natural_key(&u.name));
        for u in matched {
            if !seen.insert(u.name.clone()) {
                continue;
            }
            if u.desired_state != TargetState::Launched.to_string() {
                sel.notes.push(format!(
                    "Skipping {}: not running (desired state {}); replace it with fleetctl start --replace",
                    u.name, u.desired_state
                ));
                continue;
            }
            let path = dir.join(&u.name);
            let path = path.to_string_lossy();
            let Some(found) = local(&path) else {
                let template = UnitName::parse(&u.name)
                    .ok()
                    .filter(UnitName::is_instance)
                    .map(|n| format!(" or its template {}", dir.join(n.template()).display()))
                    .unwrap_or_default();
                return Err(format!(
                    "no new content for {}: neither {path}{template} exists",
                    u.name
                ));
            };
            let file = found.file.clone().map_err(|e| {
                format!(
                    "cannot read the new content of {} from {}: {e}",
                    u.name,
                    found.path.display()
                )
            })?;
            for w in create::validate(&u.name, &file)? {
                let (create::Message::Stderr(t) | create::Message::Stdout(t)) = w;
                sel.notes.push(t);
            }
            let global = is_global(u);
            if is_global(&Unit::new(&u.name, &file, TargetState::Launched)) != global {
                return Err(if global {
                    format!(
                        "the new content of {} is not global (no X-Fleet Global=true), and {} is a global unit; a rolling replace keeps units where they are: destroy it and start it anew instead",
                        u.name, u.name
                    )
                } else {
                    format!(
                        "the new content of {} makes it a global unit (X-Fleet Global=true); a rolling replace keeps units where they are: destroy it and start it as a global unit instead",
                        u.name
                    )
                });
            }
            let hash = file.hash();
            if global {
                sel.globals.push(GlobalTarget {
                    target: Target {
                        name: u.name.clone(),
                        hash: hash.to_string(),
                        file,
                        desired: TargetState::Launched,
                    },
                    current: u.file().hash().to_string(),
                });
                continue;
            }
            if hash == u.file().hash() {
                sel.notes.push(format!(
                    "{} already runs this content (hash {})",
                    u.name,
                    hash.short()
                ));
                continue;
            }
            if found.template {
                let template = found
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let in_registry = units.iter().find(|t| t.name == template);
                if in_registry.is_some_and(|t| t.file().hash() != hash)
                    && !sel.templates.iter().any(|(n, _)| *n == template)
                {
                    sel.templates.push((template, file.clone()));
                }
            }
            sel.targets.push(Target {
                name: u.name.clone(),
                hash: hash.to_string(),
                file,
                desired: TargetState::Launched,
            });
        }
    }
    Ok(sel)
}

/// What one poll read of one unit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// `GET /units/NAME` (`None`: not in the registry).
    pub unit: Option<Unit>,
    /// Its state on every machine that reports one.
    pub states: Vec<UnitState>,
    /// The poll could not read it: why.
    pub error: Option<String>,
}

/// Where one replaced unit is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Not there yet: what it is doing.
    Pending(String),
    /// Active with the new hash on this machine.
    Active { machine: String },
    /// Will not get there: why.
    Failed(String),
}

fn short(hash: &str) -> &str {
    hash.get(..7).unwrap_or(hash)
}

/// How machines are named in what fleetctl prints: machine id -> legend (fleetctl's
/// `1234abcd.../10.0.0.1`); a machine not in it is named by its id.
pub type Legends = BTreeMap<String, String>;

fn legend<'a>(legends: &'a Legends, id: &'a str) -> &'a str {
    legends.get(id).map_or(id, String::as_str)
}

/// Judges one unit of a batch: active when its machine reports it active with `new_hash`,
/// failed when that machine reports the new content failed.
pub fn judge(new_hash: &str, seen: &Seen, legends: &Legends) -> Progress {
    if let Some(e) = &seen.error {
        return Progress::Pending(format!("cannot read its state: {e}"));
    }
    let Some(unit) = &seen.unit else {
        return Progress::Failed("it was removed from the registry".into());
    };
    if unit.desired_state != TargetState::Launched.to_string() {
        return Progress::Failed(format!(
            "its desired state was changed to {} meanwhile",
            unit.desired_state
        ));
    }
    if unit.machine_id.is_empty() {
        return Progress::Pending(match &unit.reason {
            Some(r) => format!("not placed: {r}"),
            None => "not placed yet".into(),
        });
    }
    let id = &unit.machine_id;
    let machine = legend(legends, id);
    let Some(state) = seen.states.iter().find(|s| s.machine_id == *id) else {
        return Progress::Pending(format!("no state from its machine {machine} yet"));
    };
    if state.hash != new_hash {
        return Progress::Pending(format!(
            "machine {machine} still reports hash {}",
            short(&state.hash)
        ));
    }
    match state.systemd_active_state.as_str() {
        "active" => Progress::Active {
            machine: id.clone(),
        },
        "failed" => {
            let mut why = format!("failed on {machine} ({}", state.systemd_sub_state);
            if let Some(r) = &state.reason {
                why.push_str(": ");
                why.push_str(r);
            }
            why.push(')');
            Progress::Failed(why)
        }
        other => Progress::Pending(format!(
            "{} on {machine}",
            if other.is_empty() { "-" } else { other }
        )),
    }
}

/// What the rollout machine is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The batch's PUTs are done; the units whose PUT failed, with why.
    Replaced { failed: Vec<(String, String)> },
    /// A poll of the units [`Next::Poll`] named.
    Observed(BTreeMap<String, Seen>),
    /// The health command's outcome for the units [`Next::Check`] named.
    Checked(BTreeMap<String, Result<(), String>>),
    /// The batch's time (or the command's `--timeout`) is up.
    TimedOut,
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// PUT these units' new content (desired state kept); answer [`Input::Replaced`].
    Replace(Vec<String>),
    /// Read these units; answer [`Input::Observed`].
    Poll(Vec<String>),
    /// Run the health command for these (unit, machine); answer [`Input::Checked`].
    Check(Vec<(String, String)>),
    /// Every unit runs its new content.
    Done,
    Failed(Failure),
}

/// Where a rollout stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The batch it stopped in (1-based) and the number of batches.
    pub batch: usize,
    pub batches: usize,
    pub unit: String,
    pub reason: String,
    /// Units given the new content (the failed one among them, unless its PUT failed).
    pub replaced: Vec<String>,
    /// Units left on their old content.
    pub old: Vec<String>,
    /// The global unit rolled, when the rollout was of machines (then `unit`, `replaced` and
    /// `old` name machines).
    pub global: Option<String>,
}

impl Failure {
    /// What fleetctl prints on stderr.
    pub fn lines(&self) -> Vec<String> {
        if let Some(unit) = &self.global {
            return self.global_lines(unit);
        }
        let mut lines = vec![format!(
            "Rolling replace stopped in batch {}/{}: {} {}",
            self.batch, self.batches, self.unit, self.reason
        )];
        if !self.replaced.is_empty() {
            lines.push(format!(
                "Replaced with the new content: {}",
                self.replaced.join(" ")
            ));
        }
        if self.old.is_empty() {
            lines.push("No unit was left on the old content".into());
        } else {
            lines.push(format!(
                "Still running the old content: {}",
                self.old.join(" ")
            ));
        }
        lines
    }

    fn global_lines(&self, unit: &str) -> Vec<String> {
        let mut lines = vec![format!(
            "Rolling replace of {unit} stopped in batch {}/{}: {} {}",
            self.batch, self.batches, self.unit, self.reason
        )];
        if !self.replaced.is_empty() {
            lines.push(format!(
                "Allowed the new content: {}",
                self.replaced.join(", ")
            ));
        }
        if !self.old.is_empty() {
            lines.push(format!(
                "Still running the old content: {}",
                self.old.join(", ")
            ));
        }
        lines.push(format!(
            "The rollout is kept (GET /fleet/v1/rollouts/{unit}): run this command again to resume it, or fleetctl start --replace {unit} to give every machine the new content at once (which drops the rollout)"
        ));
        lines
    }
}

/// The lines to print and what to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub lines: Vec<String>,
    pub next: Next,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Replacing,
    Waiting,
    Checking,
    Over,
}

/// The rollout as a state machine: [`Rollout::start`], then one [`Input`] for each
/// [`Next`] asked for, until [`Next::Done`] or [`Next::Failed`].
#[derive(Clone, Debug)]
pub struct Rollout {
    batches: Vec<Vec<String>>,
    hashes: BTreeMap<String, String>,
    health: bool,
    batch: usize,
    phase: Phase,
    /// Units of the batch not there yet, with what they were last seen doing.
    waiting: BTreeMap<String, String>,
    /// Units of the batch active with the new content, and their machines.
    active: BTreeMap<String, String>,
    legends: Legends,
    /// The global unit whose machines are rolled ([`Rollout::machines`]).
    global: Option<String>,
}

impl Rollout {
    /// `targets` in order, `size` at a time; `health`: a health command is to be run.
    pub fn new(targets: &[(String, String)], size: usize, health: bool) -> Rollout {
        let names: Vec<String> = targets.iter().map(|(n, _)| n.clone()).collect();
        Rollout {
            batches: names.chunks(size.max(1)).map(<[String]>::to_vec).collect(),
            hashes: targets.iter().cloned().collect(),
            health,
            batch: 0,
            phase: Phase::Over,
            waiting: BTreeMap::new(),
            active: BTreeMap::new(),
            legends: Legends::new(),
            global: None,
        }
    }

    /// A rollout of the global unit `unit`'s new content (hash `new_hash`) over `machines` (ids,
    /// in order), `size` machines at a time: a machine stands where a unit stands otherwise.
    /// Its [`Next::Replace`] names the machines to allow the new content, its [`Next::Poll`]
    /// the machines whose state of the unit to read ([`Seen`] by machine), its
    /// [`Next::Check`] (machine, machine) pairs.
    pub fn machines(
        unit: &str,
        new_hash: &str,
        machines: &[String],
        size: usize,
        health: bool,
    ) -> Rollout {
        let targets: Vec<(String, String)> = machines
            .iter()
            .map(|m| (m.clone(), new_hash.to_string()))
            .collect();
        let mut r = Rollout::new(&targets, size, health);
        r.global = Some(unit.to_string());
        r
    }

    /// How a unit, or a machine of a global unit's rollout, is named in what is printed.
    fn name(&self, key: &str) -> String {
        match self.global {
            Some(_) => format!("machine {}", legend(&self.legends, key)),
            None => key.to_string(),
        }
    }

    fn names(&self, keys: &[String]) -> String {
        let sep = if self.global.is_some() { ", " } else { " " };
        keys.iter()
            .map(|k| self.name(k))
            .collect::<Vec<_>>()
            .join(sep)
    }

    /// Names machines by these legends in what it prints.
    pub fn with_legends(mut self, legends: Legends) -> Rollout {
        self.legends = legends;
        self
    }

    pub fn batches(&self) -> &[Vec<String>] {
        &self.batches
    }

    fn label(&self) -> String {
        format!("batch {}/{}", self.batch + 1, self.batches.len())
    }

    fn hash_of(&self, unit: &str) -> &str {
        self.hashes.get(unit).map_or("", String::as_str)
    }

    /// The batch's new hash(es), short.
    fn batch_hashes(&self) -> String {
        let hashes: BTreeSet<&str> = self.batches[self.batch]
            .iter()
            .map(|u| short(self.hash_of(u)))
            .collect();
        hashes.into_iter().collect::<Vec<_>>().join(" ")
    }

    pub fn start(&mut self) -> Step {
        if self.batches.is_empty() {
            self.phase = Phase::Over;
            return Step {
                lines: vec!["Nothing to replace".into()],
                next: Next::Done,
            };
        }
        let total: usize = self.batches.iter().map(Vec::len).sum();
        let mut step = self.begin_batch();
        let what = match &self.global {
            Some(unit) => format!("{unit} on {total} machine(s)"),
            None => format!("{total} unit(s)"),
        };
        step.lines.insert(
            0,
            format!(
                "Replacing {what}, {} at a time: {} batch(es)",
                self.batches[0].len(),
                self.batches.len()
            ),
        );
        step
    }

    fn begin_batch(&mut self) -> Step {
        self.phase = Phase::Replacing;
        self.active.clear();
        let units = self.batches[self.batch].clone();
        self.waiting = units
            .iter()
            .map(|u| (u.clone(), "being replaced".to_string()))
            .collect();
        let what = match &self.global {
            Some(unit) => format!("allowed the new content of {unit}"),
            None => "replacing".to_string(),
        };
        Step {
            lines: vec![format!(
                "{}: {}: {what} (new hash {})",
                self.label(),
                self.names(&units),
                self.batch_hashes()
            )],
            next: Next::Replace(units),
        }
    }

    fn fail(&mut self, unit: &str, reason: String, put_failed: &[String]) -> Step {
        self.phase = Phase::Over;
        let replaced: Vec<String> = self.batches[..=self.batch]
            .iter()
            .flatten()
            .filter(|u| !put_failed.contains(u))
            .cloned()
            .collect();
        let old: Vec<String> = put_failed
            .iter()
            .cloned()
            .chain(self.batches[self.batch + 1..].iter().flatten().cloned())
            .collect();
        let named = |keys: Vec<String>| keys.iter().map(|k| self.name(k)).collect();
        Step {
            lines: vec![],
            next: Next::Failed(Failure {
                batch: self.batch + 1,
                batches: self.batches.len(),
                unit: self.name(unit),
                reason,
                replaced: named(replaced),
                old: named(old),
                global: self.global.clone(),
            }),
        }
    }

    fn batch_done(&mut self) -> Step {
        let line = format!(
            "{}: {}: active (new hash {})",
            self.label(),
            self.names(&self.batches[self.batch]),
            self.batch_hashes()
        );
        self.batch += 1;
        if self.batch == self.batches.len() {
            self.phase = Phase::Over;
            let total: usize = self.batches.iter().map(Vec::len).sum();
            let done = match &self.global {
                Some(unit) => format!("All {total} machine(s) run the new content of {unit}"),
                None => format!("All {total} unit(s) run their new content"),
            };
            return Step {
                lines: vec![line, done],
                next: Next::Done,
            };
        }
        let mut step = self.begin_batch();
        step.lines.insert(0, line);
        step
    }

    /// The answer to the last [`Next`].
    pub fn on(&mut self, input: Input) -> Step {
        match (self.phase, input) {
            (Phase::Replacing, Input::Replaced { failed }) => {
                if let Some((unit, error)) = failed.first() {
                    let names: Vec<String> = failed.iter().map(|(n, _)| n.clone()).collect();
                    return self.fail(unit, format!("could not be replaced: {error}"), &names);
                }
                self.phase = Phase::Waiting;
                Step {
                    lines: vec![],
                    next: Next::Poll(self.waiting.keys().cloned().collect()),
                }
            }
            (Phase::Waiting, Input::Observed(seen)) => {
                let mut lines = Vec::new();
                for unit in self.waiting.keys().cloned().collect::<Vec<_>>() {
                    let Some(s) = seen.get(&unit) else { continue };
                    match judge(self.hash_of(&unit), s, &self.legends) {
                        Progress::Active { machine } => {
                            lines.push(match self.global {
                                Some(_) => format!(
                                    "{}: {} active (new hash {})",
                                    self.label(),
                                    self.name(&unit),
                                    short(self.hash_of(&unit))
                                ),
                                None => format!(
                                    "{}: {unit} active on {} (hash {})",
                                    self.label(),
                                    legend(&self.legends, &machine),
                                    short(self.hash_of(&unit))
                                ),
                            });
                            self.waiting.remove(&unit);
                            self.active.insert(unit, machine);
                        }
                        Progress::Failed(why) => {
                            let mut step = self.fail(&unit, why, &[]);
                            step.lines = lines;
                            return step;
                        }
                        Progress::Pending(what) => {
                            self.waiting.insert(unit, what);
                        }
                    }
                }
                if !self.waiting.is_empty() {
                    return Step {
                        lines,
                        next: Next::Poll(self.waiting.keys().cloned().collect()),
                    };
                }
                if !self.health {
                    let mut step = self.batch_done();
                    lines.append(&mut step.lines);
                    step.lines = lines;
                    return step;
                }
                self.phase = Phase::Checking;
                self.waiting = self
                    .active
                    .keys()
                    .map(|u| (u.clone(), "health check not finished yet".to_string()))
                    .collect();
                Step {
                    lines,
                    next: Next::Check(self.to_check()),
                }
            }
            (Phase::Checking, Input::Checked(results)) => {
                let mut lines = Vec::new();
                for (unit, result) in results {
                    if !self.waiting.contains_key(&unit) {
                        continue;
                    }
                    match result {
                        Ok(()) => {
                            lines.push(format!(
                                "{}: {} passed the health check",
                                self.label(),
                                self.name(&unit)
                            ));
                            self.waiting.remove(&unit);
                        }
                        Err(e) => {
                            self.waiting
                                .insert(unit, format!("health check failing: {e}"));
                        }
                    }
                }
                if self.waiting.is_empty() {
                    let mut step = self.batch_done();
                    lines.append(&mut step.lines);
                    step.lines = lines;
                    return step;
                }
                Step {
                    lines,
                    next: Next::Check(self.to_check()),
                }
            }
            (Phase::Waiting | Phase::Checking, Input::TimedOut) => {
                let (unit, what) = self
                    .waiting
                    .iter()
                    .next()
                    .map(|(u, w)| (u.clone(), w.clone()))
                    .unwrap_or_default();
                let goal = if self.phase == Phase::Checking {
                    "passed the health check"
                } else {
                    "become active with its new content"
                };
                self.fail(&unit, format!("has not {goal} in time: {what}"), &[])
            }
            (Phase::Replacing, Input::TimedOut) => {
                let unit = self.waiting.keys().next().cloned().unwrap_or_default();
                let names: Vec<String> = self.waiting.keys().cloned().collect();
                self.fail(&unit, "could not be replaced in time".into(), &names)
            }
            (phase, input) => Step {
                lines: vec![format!(
                    "internal error: rollout got {input:?} while {phase:?}; stopping"
                )],
                next: self.stop_unexpectedly(),
            },
        }
    }

    /// Where the rollout stands when asked something out of turn (an I/O loop bug): stopped,
    /// saying what may have been replaced.
    fn stop_unexpectedly(&mut self) -> Next {
        if self.phase == Phase::Over || self.batch >= self.batches.len() {
            self.phase = Phase::Over;
            return Next::Done;
        }
        let unit = self.batches[self.batch][0].clone();
        self.fail(&unit, "stopped: internal error".into(), &[]).next
    }

    fn to_check(&self) -> Vec<(String, String)> {
        self.waiting
            .keys()
            .filter_map(|u| self.active.get(u).map(|m| (u.clone(), m.clone())))
            .collect()
    }
}

/// `seconds` from now; `None` when that is beyond what the clock can count (no limit, then:
/// the flags take any number, and a panic over a huge one would help nobody).
fn after(seconds: f64) -> Option<Instant> {
    let d = Duration::try_from_secs_f64(seconds).ok()?;
    Instant::now().checked_add(d)
}

/// Polls and health-check retries are this far apart.
const POLL_INTERVAL: Duration = crate::wait::POLL_INTERVAL;

/// Runs `fleetctl start --replace --rolling=N ARGS`. Returns the exit code.
pub async fn run(
    fleet: &Fleet,
    args: &[String],
    rolling: &Rolling,
    block: &crate::cli::Block,
    out: &Output,
) -> i32 {
    if args.is_empty() {
        out.eprintln("No units given");
        return 0;
    }
    if block.no_block {
        out.eprintln(
            "--rolling waits for each batch before the next: it cannot be used with --no-block",
        );
        return 2;
    }
    let units = match fleet.units().await {
        Ok(u) => u,
        Err(e) => {
            out.eprintln(&format!(
                "Error retrieving list of units from repository: {e}"
            ));
            return 1;
        }
    };
    let selection = match select(args, &units, |path| create::local_lookup(path).local) {
        Ok(s) => s,
        Err(e) => {
            out.eprintln(&e);
            return 1;
        }
    };
    selection.notes.iter().for_each(|n| out.eprintln(n));
    let size = rolling.rolling.unwrap_or(1) as usize;
    // Machines are named as the other commands name them; without the list, by their ids.
    let machines = Machines::new(fleet.machines().await.unwrap_or_default());
    let legends: Legends = machines
        .0
        .keys()
        .map(|id| (id.clone(), machines.legend(id, false)))
        .collect();
    let overall = (block.timeout > 0.0)
        .then(|| after(block.timeout))
        .flatten();
    if !selection.targets.is_empty() || selection.globals.is_empty() {
        let pairs: Vec<(String, String)> = selection
            .targets
            .iter()
            .map(|t| (t.name.clone(), t.hash.clone()))
            .collect();
        let rollout =
            Rollout::new(&pairs, size, rolling.health_cmd.is_some()).with_legends(legends.clone());
        let mut subject = Subject::Units(
            selection
                .targets
                .iter()
                .map(|t| (t.name.as_str(), t))
                .collect(),
        );
        if !drive(fleet, rollout, &mut subject, rolling, overall, out).await {
            return 1;
        }
        for (name, file) in &selection.templates {
            // Instances copy their template's content when they are created (fleet's rule),
            // so the template gets the new content for instances started from now on.
            let unit = Unit::new(name, file, TargetState::Inactive);
            match fleet.create_unit(&unit).await {
                Ok(()) => out.println(&format!("Template {name} updated to the new content")),
                Err(e) => {
                    out.eprintln(&format!(
                        "Every instance runs the new content, but updating template {name} failed: {e}; run fleetctl submit --replace with it"
                    ));
                    return 1;
                }
            }
        }
    }
    for g in &selection.globals {
        let code = run_global(fleet, g, size, &legends, rolling, overall, out).await;
        if code != 0 {
            return code;
        }
    }
    0
}

/// What a [`Rollout`] is carried out on.
enum Subject<'a> {
    /// Units, each replaced by a PUT of its new content.
    Units(BTreeMap<&'a str, &'a Target>),
    /// The machines of a global unit, each allowed its new content in the rollout record.
    Global {
        unit: &'a str,
        record: api::types::GlobalRollout,
    },
}

/// Carries out `rollout` to its end, printing its lines. True when every unit (or machine)
/// runs the new content; false when it stopped (why is printed).
async fn drive(
    fleet: &Fleet,
    mut rollout: Rollout,
    subject: &mut Subject<'_>,
    rolling: &Rolling,
    overall: Option<Instant>,
    out: &Output,
) -> bool {
    let mut deadline = after(rolling.batch_timeout);
    let mut step = rollout.start();
    let mut repeat = false;
    loop {
        step.lines.iter().for_each(|l| out.println(l));
        let end = match (overall, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let past = end.is_some_and(|e| Instant::now() >= e);
        let input = match step.next {
            Next::Done => return true,
            Next::Failed(f) => {
                f.lines().iter().for_each(|l| out.eprintln(l));
                return false;
            }
            Next::Replace(names) => {
                deadline = after(rolling.batch_timeout);
                repeat = false;
                Input::Replaced {
                    failed: replace(fleet, subject, &names).await,
                }
            }
            Next::Poll(names) => {
                if past {
                    Input::TimedOut
                } else {
                    tokio::time::sleep(POLL_INTERVAL).await;
                    Input::Observed(match subject {
                        Subject::Units(_) => observe(fleet, &names).await,
                        Subject::Global { unit, .. } => observe_machines(fleet, unit, &names).await,
                    })
                }
            }
            Next::Check(pairs) => {
                if past {
                    Input::TimedOut
                } else {
                    if repeat {
                        tokio::time::sleep(POLL_INTERVAL).await;
                    }
                    repeat = true;
                    let cmd = rolling.health_cmd.as_deref().unwrap_or("true");
                    let unit = match subject {
                        Subject::Units(_) => None,
                        Subject::Global { unit, .. } => Some(*unit),
                    };
                    Input::Checked(check(fleet, cmd, &pairs, end, unit).await)
                }
            }
        };
        step = rollout.on(input);
    }
}

/// Replaces `names` (units, or machines of a global unit); returns those that failed, with why.
async fn replace(
    fleet: &Fleet,
    subject: &mut Subject<'_>,
    names: &[String],
) -> Vec<(String, String)> {
    match subject {
        Subject::Units(targets) => {
            let puts = names
                .iter()
                .filter_map(|n| targets.get(n.as_str()))
                .map(|t| {
                    let unit = Unit::new(&t.name, &t.file, t.desired);
                    async move { (t.name.clone(), fleet.create_unit(&unit).await) }
                });
            futures::future::join_all(puts)
                .await
                .into_iter()
                .filter_map(|(n, r)| r.err().map(|e| (n, e.to_string())))
                .collect()
        }
        Subject::Global { unit, record } => {
            let mut next = record.clone();
            for m in names {
                if !next.allowed_machines.contains(m) {
                    next.allowed_machines.push(m.clone());
                }
            }
            match fleet.put_rollout(unit, &next).await {
                Ok(_) => {
                    *record = next;
                    Vec::new()
                }
                Err(e) => names
                    .iter()
                    .map(|m| {
                        (
                            m.clone(),
                            format!("allowing it the new content failed: {e}"),
                        )
                    })
                    .collect(),
            }
        }
    }
}

/// Rolls the global unit of `g` over the machines that run it, `size` at a time. Returns the
/// exit code.
async fn run_global(
    fleet: &Fleet,
    g: &GlobalTarget,
    size: usize,
    legends: &Legends,
    rolling: &Rolling,
    overall: Option<Instant>,
    out: &Output,
) -> i32 {
    let name = g.target.name.as_str();
    let new = g.target.hash.as_str();
    let existing = match fleet.rollout(name).await {
        Ok(r) => r,
        Err(e) => {
            out.eprintln(&format!("cannot read the rollout of {name}: {e}"));
            return 1;
        }
    };
    let (record, resumed) = match plan_global(g, existing) {
        Ok(Some(r)) => r,
        Ok(None) => {
            out.eprintln(&format!(
                "{name} already runs this content (hash {})",
                short(new)
            ));
            return 0;
        }
        Err(e) => {
            out.eprintln(&e);
            return 1;
        }
    };
    let states = match fleet.unit_states(Some(name)).await {
        Ok(s) => s,
        Err(e) => {
            out.eprintln(&format!(
                "cannot read which machines run {name}: {e}; nothing was changed"
            ));
            return 1;
        }
    };
    let order = machine_order(&states, &record.allowed_machines);
    if order.is_empty() {
        out.eprintln(&format!(
            "no machine reports {name}, so there is nothing to roll; replace it with fleetctl start --replace"
        ));
        return 1;
    }
    if resumed {
        out.println(&format!(
            "Resuming the rollout of {name}: {} machine(s) already allowed the new content (hash {})",
            record.allowed_machines.len(),
            short(new)
        ));
    } else {
        // The record first, allowing no machine, then the content: every agent keeps the old
        // content when the new one reaches it.
        if let Err(e) = fleet.put_rollout(name, &record).await {
            out.eprintln(&format!(
                "cannot start a rollout of {name}: {e}; nothing was changed"
            ));
            return 1;
        }
        let unit = Unit::new(name, &g.target.file, g.target.desired);
        if let Err(e) = fleet.create_unit(&unit).await {
            out.eprintln(&format!(
                "cannot give {name} its new content: {e}; no machine runs it"
            ));
            if let Err(e) = fleet.delete_rollout(name).await {
                out.eprintln(&format!(
                    "dropping the rollout failed too: {e}; run fleetctl start --replace {name} to drop it"
                ));
            }
            return 1;
        }
    }
    let rollout = Rollout::machines(name, new, &order, size, rolling.health_cmd.is_some())
        .with_legends(legends.clone());
    let mut subject = Subject::Global { unit: name, record };
    if !drive(fleet, rollout, &mut subject, rolling, overall, out).await {
        return 1;
    }
    match fleet.delete_rollout(name).await {
        Ok(_) => 0,
        Err(e) => {
            out.eprintln(&format!(
                "Every machine runs the new content of {name}, but dropping its rollout failed: {e}; run fleetctl start --replace {name} to drop it"
            ));
            1
        }
    }
}

/// The rollout record to drive for `g`, given the one in the registry, and whether it is
/// resumed; `None` when the unit already runs this content with no rollout of it. A rollout of
/// other content is not taken over: its machines would be moved to content nobody asked for.
pub fn plan_global(
    g: &GlobalTarget,
    existing: Option<api::types::GlobalRollout>,
) -> Result<Option<(api::types::GlobalRollout, bool)>, String> {
    let name = &g.target.name;
    match existing {
        Some(r) if r.new_hash == g.target.hash && g.current == g.target.hash => {
            Ok(Some((r, true)))
        }
        // Given other content since it stopped (by a client that knows no rollouts): every
        // machine runs that content now, and resuming would move them back all at once.
        Some(r) if r.new_hash == g.target.hash => Err(format!(
            "{name} was given other content (hash {}) since its rollout to this content stopped, so every machine runs that: run fleetctl start --replace {name} to drop the rollout, then roll again",
            short(&g.current)
        )),
        Some(r) => Err(format!(
            "a rollout of {name} to other content (hash {}) is stopped, {} machine(s) allowed it: run this command with that content to resume it, or fleetctl start --replace {name} to give every machine the content {name} has (which drops the rollout), then roll again",
            short(&r.new_hash),
            r.allowed_machines.len()
        )),
        None if g.current == g.target.hash => Ok(None),
        None => Ok(Some((
            api::types::GlobalRollout {
                name: name.clone(),
                old_hash: g.current.clone(),
                new_hash: g.target.hash.clone(),
                allowed_machines: Vec::new(),
            },
            false,
        ))),
    }
}

/// The machines to roll a global unit over: those that report a state of it, the ones already
/// allowed first (a resumed rollout checks them again), each part in id order.
pub fn machine_order(states: &[UnitState], allowed: &[String]) -> Vec<String> {
    let running: BTreeSet<&str> = states.iter().map(|s| s.machine_id.as_str()).collect();
    let (first, rest): (Vec<&str>, Vec<&str>) = running
        .into_iter()
        .partition(|m| allowed.iter().any(|a| a == m));
    first.into_iter().chain(rest).map(str::to_string).collect()
}

/// Reads the global unit `unit` and its state on each of `machines`: a [`Seen`] per machine, as
/// if the unit were placed there.
async fn observe_machines(
    fleet: &Fleet,
    unit: &str,
    machines: &[String],
) -> BTreeMap<String, Seen> {
    let (read, states) = futures::join!(fleet.unit(unit), fleet.unit_states(Some(unit)));
    machines
        .iter()
        .map(|m| {
            let seen = match (&read, &states) {
                (Ok(u), Ok(states)) => Seen {
                    unit: u.clone().map(|mut u| {
                        u.machine_id = m.clone();
                        u
                    }),
                    states: states
                        .iter()
                        .filter(|s| s.machine_id == *m)
                        .cloned()
                        .collect(),
                    error: None,
                },
                (Err(e), _) | (_, Err(e)) => Seen {
                    error: Some(e.to_string()),
                    ..Seen::default()
                },
            };
            (m.clone(), seen)
        })
        .collect()
}

async fn observe(fleet: &Fleet, names: &[String]) -> BTreeMap<String, Seen> {
    let reads = names.iter().map(|name| async move {
        let (unit, states) = futures::join!(fleet.unit(name), fleet.unit_states(Some(name)));
        let seen = match (unit, states) {
            (Ok(unit), Ok(states)) => Seen {
                unit,
                states,
                error: None,
            },
            (Err(e), _) | (_, Err(e)) => Seen {
                error: Some(e.to_string()),
                ..Seen::default()
            },
        };
        (name.clone(), seen)
    });
    futures::future::join_all(reads).await.into_iter().collect()
}

/// Runs the health command for each (unit, machine), side by side, each bounded by `end`.
/// With `global`, the pairs are (machine, machine) of that global unit's rollout: `UNIT` is
/// the global unit.
async fn check(
    fleet: &Fleet,
    cmd: &str,
    pairs: &[(String, String)],
    end: Option<Instant>,
    global: Option<&str>,
) -> BTreeMap<String, Result<(), String>> {
    // The IPs only help the command; a failed listing leaves MACHINE_IP empty.
    let machines = fleet.machines().await.unwrap_or_default();
    let runs = pairs.iter().map(|(unit, machine)| {
        let ip = machines
            .iter()
            .find(|m| m.id == *machine)
            .map(|m| m.primary_ip.clone())
            .unwrap_or_default();
        let name = global.unwrap_or(unit);
        async move { (unit.clone(), health(cmd, name, machine, &ip, end).await) }
    });
    // A run cut short by the deadline says nothing about the unit: left out, so that the
    // rollout's failure names what the last finished run said.
    futures::future::join_all(runs)
        .await
        .into_iter()
        .filter_map(|(unit, result)| Some((unit, result?)))
        .collect()
}

/// One run of the health command; `None` when it was still running at `end` (then killed).
async fn health(
    cmd: &str,
    unit: &str,
    machine: &str,
    ip: &str,
    end: Option<Instant>,
) -> Option<Result<(), String>> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("UNIT", unit)
        .env("MACHINE", machine)
        .env("MACHINE_IP", ip)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let finished = match end {
        Some(end) => tokio::time::timeout_at(end, child).await.ok()?,
        None => child.await,
    };
    let output = match finished {
        Err(e) => return Some(Err(format!("cannot run sh -c {cmd:?}: {e}"))),
        Ok(o) => o,
    };
    if output.status.success() {
        return Some(Ok(()));
    }
    let text = String::from_utf8_lossy(if output.stderr.is_empty() {
        &output.stdout
    } else {
        &output.stderr
    })
    .lines()
    .last()
    .unwrap_or("")
    .trim()
    .to_string();
    let status = match output.status.code() {
        Some(c) => format!("exit status {c}"),
        None => "killed by a signal".into(),
    };
    Some(Err(if text.is_empty() {
        status
    } else {
        format!("{status}: {text}")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(exec: &str) -> UnitFile {
        UnitFile::parse(&format!("[Service]\nExecStart={exec}\n")).unwrap()
    }

    fn registry_unit(name: &str, f: &UnitFile, desired: &str) -> Unit {
        let mut u = Unit::new(name, f, TargetState::Inactive);
        u.desired_state = desired.into();
        u
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// `start`'s rolling flags as the command line gives them, or the parse error.
    fn parse(args: &[&str]) -> Result<(Rolling, Vec<String>), String> {
        use clap::Parser;
        let cli =
            crate::cli::Cli::try_parse_from(["fleetctl", "start", "--replace"].iter().chain(args))
                .map_err(|e| e.to_string())?;
        match cli.command {
            Some(crate::cli::Command::Start { rolling, units, .. }) => Ok((rolling, units)),
            other => Err(format!("not start: {other:?}")),
        }
    }

    #[test]
    fn rolling_flags_parse_as_documented() {
        let (r, units) = parse(&["--rolling", "web@.service"]).unwrap();
        assert_eq!(
            (r.rolling, r.health_cmd, r.batch_timeout),
            (Some(1), None, 300.0)
        );
        assert_eq!(units, ["web@.service"]);
        let (r, _) = parse(&[
            "--rolling=3",
            "--health-cmd",
            "true",
            "--batch-timeout=2.5",
            "x",
        ])
        .unwrap();
        assert_eq!(
            (r.rolling, r.health_cmd.as_deref(), r.batch_timeout),
            (Some(3), Some("true"), 2.5)
        );
        let (r, _) = parse(&["x"]).unwrap();
        assert_eq!(r.rolling, None, "a plain start is not rolling");
        for bad in [
            &["--rolling=0", "x"][..],
            &["--rolling=two", "x"],
            &["--rolling", "--batch-timeout=0", "x"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn a_time_beyond_the_clock_is_no_limit_rather_than_a_panic() {
        assert!(after(2.5).is_some());
        assert_eq!(after(1e30), None);
        assert_eq!(after(f64::MAX), None);
    }

    #[test]
    fn arguments_name_globs_of_units_and_where_their_files_are() {
        let table = [
            ("units/web@.service", "web@*.service", "units"),
            ("web@.service", "web@*.service", ""),
            ("units/web@*.service", "web@*.service", "units"),
            ("units/web@1", "web@1.service", "units"),
            ("api", "api.service", ""),
            ("a/b/db.socket", "db.socket", "a/b"),
        ];
        for (arg, want_pattern, want_dir) in table {
            let (p, d) = pattern(arg);
            assert_eq!(
                (p.as_str(), d.as_path()),
                (want_pattern, Path::new(want_dir)),
                "{arg}"
            );
        }
    }

    #[test]
    fn names_are_ordered_with_numbers_as_numbers() {
        let mut v = names(&[
            "web@10.service",
            "web@9.service",
            "web@a.service",
            "web@1.service",
            "web@02.service",
        ]);
        v.sort_by_cached_key(|n| natural_key(n));
        assert_eq!(
            v,
            names(&[
                "web@1.service",
                "web@02.service",
                "web@9.service",
                "web@10.service",
                "web@a.service"
            ])
        );
    }

    /// A local filesystem of unit files, by path.
    fn local<'a>(files: &'a [(&'a str, UnitFile)]) -> impl Fn(&str) -> Option<Found> + 'a {
        move |path: &str| {
            let lookup_name = unit::mangle(path);
            if let Some((p, f)) = files.iter().find(|(p, _)| *p == path) {
                return Some(Found {
                    path: p.into(),
                    file: Ok(f.clone()),
                    template: false,
                });
            }
            let n = UnitName::parse(&lookup_name)
                .ok()
                .filter(UnitName::is_instance)?;
            let t = create::template_path(path, &n);
            files
                .iter()
                .find(|(p, _)| Path::new(p) == t)
                .map(|(p, f)| Found {
                    path: p.into(),
                    file: Ok(f.clone()),
                    template: true,
                })
        }
    }

    #[test]
    fn selection_takes_running_instances_of_a_template_in_order() {
        let (old, new) = (file("/bin/old %i"), file("/bin/new %i"));
        let units = vec![
            registry_unit("web@.service", &old, "inactive"),
            registry_unit("web@10.service", &old, "launched"),
            registry_unit("web@2.service", &old, "launched"),
            registry_unit("web@3.service", &old, "loaded"),
            registry_unit("web@4.service", &new, "launched"),
            registry_unit("api.service", &old, "launched"),
        ];
        let fs = [("units/web@.service", new.clone())];
        let sel = select(&names(&["units/web@.service"]), &units, local(&fs)).unwrap();
        let got: Vec<&str> = sel.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(got, ["web@2.service", "web@10.service"]);
        assert!(sel
            .targets
            .iter()
            .all(|t| t.hash == new.hash().to_string() && t.file == new));
        assert_eq!(
            sel.templates,
            vec![("web@.service".to_string(), new.clone())]
        );
        assert_eq!(sel.notes.len(), 2, "{:?}", sel.notes);
        assert!(
            sel.notes[0].starts_with("Skipping web@3.service: not running (desired state loaded)")
        );
        assert!(sel.notes[1].starts_with("web@4.service already runs this content"));

        // The same units through a glob, and an instance file that wins over its template.
        let fs = [
            ("units/web@.service", new.clone()),
            ("units/web@10.service", file("/bin/special")),
        ];
        let sel = select(
            &names(&["units/web@*.service", "units/web@2"]),
            &units,
            local(&fs),
        )
        .unwrap();
        let got: Vec<(&str, &UnitFile)> = sel
            .targets
            .iter()
            .map(|t| (t.name.as_str(), &t.file))
            .collect();
        assert_eq!(
            got,
            [
                ("web@2.service", &new),
                ("web@10.service", &file("/bin/special"))
            ]
        );
    }

    #[test]
    fn selection_refuses_what_it_cannot_roll_before_changing_anything() {
        let old = file("/bin/old");
        let global =
            UnitFile::parse("[Service]\nExecStart=/bin/x\n[X-Fleet]\nGlobal=true\n").unwrap();
        let units = vec![
            registry_unit("web@1.service", &old, "launched"),
            registry_unit("agent.service", &global, "launched"),
        ];
        let fs = [
            ("web@.service", file("/bin/new")),
            ("agent.service", file("/bin/y")),
            ("units/web@.service", global.clone()),
        ];
        let cases: [(&[&str], &str); 5] = [
            (&["db.service"], "no unit in the registry matches db.service"),
            (&["agent.service"], "the new content of agent.service is not global"),
            (&["other/web@1.service"], "no new content for web@1.service: neither other/web@1.service or its template other/web@.service exists"),
            (&["units/web@.service"], "makes it a global unit"),
            (&["web@.service", "nothing@*.service"], "no unit in the registry matches nothing@*.service"),
        ];
        for (args, want) in cases {
            let err = select(&names(args), &units, local(&fs)).unwrap_err();
            assert!(err.contains(want), "{args:?}: {err}");
        }
        let broken = |_: &str| {
            Some(Found {
                path: "web@.service".into(),
                file: Err("line 3: bad".into()),
                template: true,
            })
        };
        let err = select(&names(&["web@1.service"]), &units, broken).unwrap_err();
        assert!(err.contains("line 3: bad"), "{err}");
    }

    const NEW: &str = "1111111aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const OLD: &str = "2222222bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn seen(machine: &str, state: Option<(&str, &str, &str)>) -> Seen {
        let mut unit = Unit {
            name: "web@1.service".into(),
            desired_state: "launched".into(),
            machine_id: machine.into(),
            ..Unit::default()
        };
        if machine.is_empty() {
            unit.reason = Some("no machine has region=north".into());
        }
        let states = state
            .map(|(hash, active, sub)| UnitState {
                name: "web@1.service".into(),
                machine_id: machine.into(),
                hash: hash.into(),
                systemd_active_state: active.into(),
                systemd_sub_state: sub.into(),
                ..UnitState::default()
            })
            .into_iter()
            .collect();
        Seen {
            unit: Some(unit),
            states,
            error: None,
        }
    }

    #[test]
    fn a_replaced_unit_is_judged_by_its_machines_state_of_the_new_hash() {
        let active = |m: &str| Progress::Active { machine: m.into() };
        let pending = |s: &str| Progress::Pending(s.into());
        let mut moved = seen("m2", Some((NEW, "active", "running")));
        moved.states[0].machine_id = "m1".into();
        let mut gone = seen("m1", None);
        gone.unit = None;
        let mut stopped = seen("m1", Some((NEW, "active", "running")));
        if let Some(u) = &mut stopped.unit {
            u.desired_state = "loaded".into();
        }
        let unreadable = Seen {
            error: Some("connection refused".into()),
            ..Seen::default()
        };
        let table = [
            (seen("m1", Some((NEW, "active", "running"))), active("m1")),
            (
                seen("m1", Some((OLD, "active", "running"))),
                pending("machine m1 still reports hash 2222222"),
            ),
            (
                seen("m1", Some((NEW, "activating", "start-post"))),
                pending("activating on m1"),
            ),
            (
                seen("m1", Some((NEW, "failed", "failed"))),
                Progress::Failed("failed on m1 (failed)".into()),
            ),
            (
                seen("m1", None),
                pending("no state from its machine m1 yet"),
            ),
            (
                seen("", None),
                pending("not placed: no machine has region=north"),
            ),
            (moved, pending("no state from its machine m2 yet")),
            (
                gone,
                Progress::Failed("it was removed from the registry".into()),
            ),
            (
                stopped,
                Progress::Failed("its desired state was changed to loaded meanwhile".into()),
            ),
            (
                unreadable,
                pending("cannot read its state: connection refused"),
            ),
        ];
        for (i, (s, want)) in table.into_iter().enumerate() {
            assert_eq!(judge(NEW, &s, &Legends::new()), want, "case {i}");
        }
    }

    fn targets(n: usize) -> Vec<(String, String)> {
        (1..=n)
            .map(|i| (format!("web@{i}.service"), NEW.to_string()))
            .collect()
    }

    fn observed(units: &[(&str, Reported)]) -> Input {
        Input::Observed(
            units
                .iter()
                .map(|(u, s)| (u.to_string(), seen(&format!("m-{u}"), *s)))
                .collect(),
        )
    }

    /// A machine's report of a unit: (hash, active state, sub state).
    type Reported = Option<(&'static str, &'static str, &'static str)>;

    const UP: Reported = Some((NEW, "active", "running"));
    const STARTING: Reported = Some((NEW, "activating", "start"));
    const FAILED: Reported = Some((NEW, "failed", "failed"));

    #[test]
    fn batches_go_one_after_the_other_each_active_before_the_next() {
        let legends = Legends::from([("m-web@1.service".into(), "m1.../10.0.0.1".into())]);
        let mut r = Rollout::new(&targets(5), 2, false).with_legends(legends);
        let s = r.start();
        assert_eq!(s.lines[0], "Replacing 5 unit(s), 2 at a time: 3 batch(es)");
        assert_eq!(
            s.lines[1],
            "batch 1/3: web@1.service web@2.service: replacing (new hash 1111111)"
        );
        assert_eq!(
            s.next,
            Next::Replace(names(&["web@1.service", "web@2.service"]))
        );
        let s = r.on(Input::Replaced { failed: vec![] });
        assert_eq!(
            s.next,
            Next::Poll(names(&["web@1.service", "web@2.service"]))
        );
        // One up, the other still starting: only the one left is polled again.
        let s = r.on(observed(&[
            ("web@1.service", UP),
            ("web@2.service", STARTING),
        ]));
        assert_eq!(
            s.lines,
            ["batch 1/3: web@1.service active on m1.../10.0.0.1 (hash 1111111)"]
        );
        assert_eq!(s.next, Next::Poll(names(&["web@2.service"])));
        let s = r.on(observed(&[("web@2.service", UP)]));
        assert_eq!(
            s.lines,
            [
                "batch 1/3: web@2.service active on m-web@2.service (hash 1111111)",
                "batch 1/3: web@1.service web@2.service: active (new hash 1111111)",
                "batch 2/3: web@3.service web@4.service: replacing (new hash 1111111)",
            ]
        );
        assert_eq!(
            s.next,
            Next::Replace(names(&["web@3.service", "web@4.service"]))
        );
        r.on(Input::Replaced { failed: vec![] });
        let s = r.on(observed(&[("web@3.service", UP), ("web@4.service", UP)]));
        assert_eq!(s.next, Next::Replace(names(&["web@5.service"])));
        r.on(Input::Replaced { failed: vec![] });
        let s = r.on(observed(&[("web@5.service", UP)]));
        assert_eq!(
            s.lines.last().unwrap(),
            "All 5 unit(s) run their new content"
        );
        assert_eq!(s.next, Next::Done);
    }

    #[test]
    fn nothing_to_replace_is_done_at_once() {
        let s = Rollout::new(&[], 2, false).start();
        assert_eq!(s.next, Next::Done);
    }

    fn failure(s: Step) -> Failure {
        match s.next {
            Next::Failed(f) => f,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    /// Takes a rollout of 6 units 2 at a time through its first batch.
    fn past_first_batch(health: bool) -> Rollout {
        let mut r = Rollout::new(&targets(6), 2, health);
        r.start();
        r.on(Input::Replaced { failed: vec![] });
        let s = r.on(observed(&[("web@1.service", UP), ("web@2.service", UP)]));
        if health {
            r.on(Input::Checked(
                [("web@1.service", Ok(())), ("web@2.service", Ok(()))]
                    .into_iter()
                    .map(|(u, o)| (u.to_string(), o))
                    .collect(),
            ));
        } else {
            assert_eq!(
                s.next,
                Next::Replace(names(&["web@3.service", "web@4.service"]))
            );
        }
        r
    }

    #[test]
    fn a_failed_unit_stops_the_rollout_and_leaves_the_rest_on_the_old_content() {
        let mut r = past_first_batch(false);
        r.on(Input::Replaced { failed: vec![] });
        let f = failure(r.on(observed(&[
            ("web@3.service", UP),
            ("web@4.service", FAILED),
        ])));
        assert_eq!(
            (f.batch, f.batches, f.unit.as_str()),
            (2, 3, "web@4.service")
        );
        assert_eq!(f.reason, "failed on m-web@4.service (failed)");
        assert_eq!(
            f.replaced,
            names(&[
                "web@1.service",
                "web@2.service",
                "web@3.service",
                "web@4.service"
            ])
        );
        assert_eq!(f.old, names(&["web@5.service", "web@6.service"]));
        assert_eq!(
            f.lines(),
            [
                "Rolling replace stopped in batch 2/3: web@4.service failed on m-web@4.service (failed)",
                "Replaced with the new content: web@1.service web@2.service web@3.service web@4.service",
                "Still running the old content: web@5.service web@6.service",
            ]
        );
    }

    #[test]
    fn a_refused_replacement_keeps_that_unit_on_the_old_content() {
        let mut r = past_first_batch(false);
        let f = failure(r.on(Input::Replaced {
            failed: vec![("web@4.service".into(), "403 role read".into())],
        }));
        assert_eq!(f.unit, "web@4.service");
        assert_eq!(f.reason, "could not be replaced: 403 role read");
        assert_eq!(
            f.replaced,
            names(&["web@1.service", "web@2.service", "web@3.service"])
        );
        assert_eq!(
            f.old,
            names(&["web@4.service", "web@5.service", "web@6.service"])
        );
    }

    #[test]
    fn a_batch_out_of_time_fails_naming_what_its_unit_was_doing() {
        let mut r = Rollout::new(&targets(3), 3, false);
        r.start();
        r.on(Input::Replaced { failed: vec![] });
        r.on(observed(&[
            ("web@1.service", UP),
            ("web@2.service", STARTING),
            ("web@3.service", UP),
        ]));
        let f = failure(r.on(Input::TimedOut));
        assert_eq!(f.unit, "web@2.service");
        assert_eq!(
            f.reason,
            "has not become active with its new content in time: activating on m-web@2.service"
        );
        assert!(f.old.is_empty());
        assert_eq!(
            f.lines().last().unwrap(),
            "No unit was left on the old content"
        );
    }

    #[test]
    fn the_health_command_is_retried_until_it_passes_or_time_is_up() {
        let mut r = past_first_batch(true);
        let checked = |v: &[(&str, Result<(), &str>)]| {
            Input::Checked(
                v.iter()
                    .map(|(u, o)| (u.to_string(), o.map_err(str::to_string)))
                    .collect(),
            )
        };
        r.on(Input::Replaced { failed: vec![] });
        let s = r.on(observed(&[("web@3.service", UP), ("web@4.service", UP)]));
        assert_eq!(
            s.next,
            Next::Check(vec![
                ("web@3.service".into(), "m-web@3.service".into()),
                ("web@4.service".into(), "m-web@4.service".into()),
            ])
        );
        let s = r.on(checked(&[
            ("web@3.service", Ok(())),
            ("web@4.service", Err("exit status 1")),
        ]));
        assert_eq!(
            s.lines,
            ["batch 2/3: web@3.service passed the health check"]
        );
        assert_eq!(
            s.next,
            Next::Check(vec![("web@4.service".into(), "m-web@4.service".into())])
        );
        let s = r.on(checked(&[("web@4.service", Ok(()))]));
        assert_eq!(
            s.next,
            Next::Replace(names(&["web@5.service", "web@6.service"]))
        );
        r.on(Input::Replaced { failed: vec![] });
        r.on(observed(&[("web@5.service", UP), ("web@6.service", UP)]));
        r.on(checked(&[(
            "web@5.service",
            Err("exit status 7: not ready"),
        )]));
        // A run cut short by the deadline reports nothing: the last finished one is named.
        let s = r.on(checked(&[]));
        assert_eq!(
            s.next,
            Next::Check(vec![
                ("web@5.service".into(), "m-web@5.service".into()),
                ("web@6.service".into(), "m-web@6.service".into()),
            ])
        );
        let f = failure(r.on(Input::TimedOut));
        assert_eq!(f.unit, "web@5.service");
        assert_eq!(
            f.reason,
            "has not passed the health check in time: health check failing: exit status 7: not ready"
        );
        assert_eq!(f.old, Vec::<String>::new());
    }

    #[test]
    fn an_answer_out_of_turn_stops_the_rollout() {
        let mut r = Rollout::new(&targets(2), 1, false);
        r.start();
        let s = r.on(Input::Checked(BTreeMap::new()));
        assert!(s.lines[0].starts_with("internal error"), "{:?}", s.lines);
        assert_eq!(failure(s).unit, "web@1.service");
    }

    /// A poll of a global unit's rollout: each machine's report of the unit.
    fn machines_seen(reports: &[(&str, Reported)]) -> Input {
        Input::Observed(
            reports
                .iter()
                .map(|(m, r)| {
                    let mut s = seen(m, *r);
                    s.unit.iter_mut().for_each(|u| u.name = "g.service".into());
                    (m.to_string(), s)
                })
                .collect(),
        )
    }

    #[test]
    fn a_global_unit_is_rolled_machine_by_machine() {
        let machines = names(&["m1", "m2", "m3"]);
        let legends = Legends::from([("m2".into(), "m2.../10.0.0.2".into())]);
        let mut r = Rollout::machines("g.service", NEW, &machines, 1, false).with_legends(legends);
        let s = r.start();
        assert_eq!(
            s.lines,
            [
                "Replacing g.service on 3 machine(s), 1 at a time: 3 batch(es)",
                "batch 1/3: machine m1: allowed the new content of g.service (new hash 1111111)",
            ]
        );
        assert_eq!(s.next, Next::Replace(names(&["m1"])));
        let s = r.on(Input::Replaced { failed: vec![] });
        assert_eq!(s.next, Next::Poll(names(&["m1"])));
        let s = r.on(machines_seen(&[("m1", Some((OLD, "active", "running")))]));
        assert_eq!(s.next, Next::Poll(names(&["m1"])));
        let s = r.on(machines_seen(&[("m1", UP)]));
        assert_eq!(
            s.lines,
            [
                "batch 1/3: machine m1 active (new hash 1111111)",
                "batch 1/3: machine m1: active (new hash 1111111)",
                "batch 2/3: machine m2.../10.0.0.2: allowed the new content of g.service (new hash 1111111)",
            ]
        );
        assert_eq!(s.next, Next::Replace(names(&["m2"])));
        r.on(Input::Replaced { failed: vec![] });
        r.on(machines_seen(&[("m2", UP)]));
        r.on(Input::Replaced { failed: vec![] });
        let s = r.on(machines_seen(&[("m3", UP)]));
        assert_eq!(
            s.lines.last().map(String::as_str),
            Some("All 3 machine(s) run the new content of g.service")
        );
        assert_eq!(s.next, Next::Done);
    }

    #[test]
    fn a_global_rollout_stops_at_the_first_failed_machine_and_says_how_to_go_on() {
        let machines = names(&["m1", "m2", "m3"]);
        let mut r = Rollout::machines("g.service", NEW, &machines, 1, true);
        r.start();
        r.on(Input::Replaced { failed: vec![] });
        let f = failure(r.on(machines_seen(&[("m1", FAILED)])));
        assert_eq!(f.unit, "machine m1");
        assert_eq!(f.replaced, ["machine m1"]);
        assert_eq!(f.old, ["machine m2", "machine m3"]);
        let lines = f.lines();
        assert_eq!(
            lines[0],
            "Rolling replace of g.service stopped in batch 1/3: machine m1 failed on m1 (failed)"
        );
        assert_eq!(
            lines[2],
            "Still running the old content: machine m2, machine m3"
        );
        assert!(
            lines[3].contains("run this command again to resume it")
                && lines[3].contains("fleetctl start --replace g.service"),
            "{lines:?}"
        );
        // A failed write of the record leaves the batch's machines on the old content.
        let mut r = Rollout::machines("g.service", NEW, &machines, 2, false);
        r.start();
        let f = failure(r.on(Input::Replaced {
            failed: vec![
                (
                    "m1".into(),
                    "allowing it the new content failed: 503".into(),
                ),
                (
                    "m2".into(),
                    "allowing it the new content failed: 503".into(),
                ),
            ],
        }));
        assert_eq!(f.replaced, Vec::<String>::new());
        assert_eq!(f.old, ["machine m1", "machine m2", "machine m3"]);
    }

    fn global_target(current: &str) -> GlobalTarget {
        let f = UnitFile::parse("[Service]\nExecStart=/bin/x\n[X-Fleet]\nGlobal=true\n").unwrap();
        GlobalTarget {
            target: Target {
                name: "g.service".into(),
                hash: NEW.into(),
                file: f,
                desired: TargetState::Launched,
            },
            current: current.into(),
        }
    }

    #[test]
    fn a_global_rollout_starts_resumes_or_refuses_to_take_over_another() {
        let record = |new: &str, allowed: &[&str]| api::types::GlobalRollout {
            name: "g.service".into(),
            old_hash: OLD.into(),
            new_hash: new.into(),
            allowed_machines: names(allowed),
        };
        // (the unit's content in the registry, its rollout) -> what is driven
        let started = plan_global(&global_target(OLD), None).unwrap();
        assert_eq!(started, Some((record(NEW, &[]), false)));
        let resumed = plan_global(&global_target(NEW), Some(record(NEW, &["m1"]))).unwrap();
        assert_eq!(resumed, Some((record(NEW, &["m1"]), true)));
        assert_eq!(plan_global(&global_target(NEW), None).unwrap(), None);
        let other = "3333333ccccccccccccccccccccccccccccccccc";
        let err = plan_global(&global_target(other), Some(record(other, &[])))
            .map(|_| ())
            .unwrap_err();
        assert!(err.contains("resume"), "{err}");
        let err = plan_global(&global_target(other), Some(record(NEW, &["m1"]))).unwrap_err();
        assert!(
            err.contains("was given other content (hash 3333333)"),
            "{err}"
        );
        let err = plan_global(&global_target(NEW), Some(record(other, &["m1"]))).unwrap_err();
        assert!(
            err.contains("other content (hash 3333333)") && err.contains("1 machine(s)"),
            "{err}"
        );
    }

    #[test]
    fn machines_already_allowed_come_first_then_the_rest_in_id_order() {
        let state = |m: &str| UnitState {
            name: "g.service".into(),
            machine_id: m.into(),
            ..UnitState::default()
        };
        let states = [state("m3"), state("m1"), state("m2"), state("m4")];
        assert_eq!(machine_order(&states, &[]), ["m1", "m2", "m3", "m4"]);
        // An allowed machine that no longer reports the unit is not waited for.
        assert_eq!(
            machine_order(&states, &names(&["m3", "m9"])),
            ["m3", "m1", "m2", "m4"]
        );
    }

    #[test]
    fn selection_takes_global_units_whose_content_stays_global() {
        let global = |exec: &str| {
            UnitFile::parse(&format!(
                "[Service]\nExecStart={exec}\n[X-Fleet]\nGlobal=true\n"
            ))
            .unwrap()
        };
        let units = vec![
            registry_unit("g.service", &global("/bin/old"), "launched"),
            registry_unit("web@1.service", &file("/bin/old"), "launched"),
        ];
        let fs = [
            ("g.service", global("/bin/new")),
            ("web@1.service", file("/bin/new")),
        ];
        let sel = select(&names(&["g.service", "web@1.service"]), &units, local(&fs)).unwrap();
        assert_eq!(
            sel.targets
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>(),
            ["web@1.service"]
        );
        assert_eq!(sel.globals.len(), 1);
        assert_eq!(sel.globals[0].target.name, "g.service");
        assert_eq!(
            sel.globals[0].target.hash,
            global("/bin/new").hash().to_string()
        );
        assert_eq!(
            sel.globals[0].current,
            global("/bin/old").hash().to_string()
        );
        // The same content is selected too: a stopped rollout of it is resumed.
        let fs = [("g.service", global("/bin/old"))];
        let sel = select(&names(&["g.service"]), &units, local(&fs)).unwrap();
        assert_eq!(sel.globals[0].current, sel.globals[0].target.hash);
    }
}

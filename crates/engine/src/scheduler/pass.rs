//! One scheduling pass: keep what still fits, then place what is not placed.

use super::ix::{GlobIx, Ix, IxVec, MachineIx, UnitIx};
use super::relations::{Kind, Relations};
use super::{Cluster, DrainStatus, DrainedUnit, Placement, Plan};
use registry::MachineState;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::rc::Rc;
use unit::metadata_matches;

type Metadata = BTreeMap<String, BTreeSet<String>>;
/// Per machine, whether it is in a set.
type Membership = IxVec<MachineIx, bool>;
/// Machines as a sorted index list and a membership table.
type MachineSet = (Rc<Vec<MachineIx>>, Rc<Membership>);

mod why;

pub(super) use why::explain;

pub(super) fn run(cluster: &Cluster) -> Plan {
    with_pass(cluster, |pass| pass.into_plan(&cluster.placements))
}

pub(super) fn drain_report(cluster: &Cluster) -> Vec<DrainedUnit> {
    surveyed_pass(cluster, true, |pass| {
        pass.drained_units
            .iter()
            .map(|(u, m, status)| DrainedUnit {
                unit: pass.rel.name(*u).to_string(),
                machine: pass.machines[*m].id.clone(),
                status: status.clone(),
            })
            .collect()
    })
}

/// Runs one whole pass over `cluster` and hands the finished pass to `f`: the plan and the
/// explanations are both read from it.
fn with_pass<R>(cluster: &Cluster, f: impl for<'a> FnOnce(Pass<'a>) -> R) -> R {
    surveyed_pass(cluster, false, f)
}

/// [`with_pass`]; with `survey`, the drain step also tries every unit of the drained machines
/// that does not move, to tell the ones waiting for their turn from the ones that cannot move.
fn surveyed_pass<R>(cluster: &Cluster, survey: bool, f: impl for<'a> FnOnce(Pass<'a>) -> R) -> R {
    let mut machines: Vec<&MachineState> = cluster.machines.iter().collect();
    if !machines.is_sorted_by(|a, b| a.id <= b.id) {
        machines.sort_by(|a, b| a.id.cmp(&b.id));
    }
    machines.dedup_by(|later, first| later.id == first.id);
    let rel = Relations::build(&cluster.units, &cluster.placements);
    let mut pass = Pass::new(IxVec::from_vec(machines), &rel);
    for m in pass.machines.indices() {
        pass.drained[m] = cluster.drain.machines.contains(&pass.machines[m].id);
    }
    pass.place_globals();
    pass.keep(&cluster.placements);
    pass.place_all();
    if pass.drained.iter().any(|&d| d) {
        let busy = cluster
            .drain
            .moving
            .iter()
            .any(|u| cluster.placements.contains_key(u));
        pass.drain(busy, survey);
    }
    f(pass)
}

/// A pool of at most 1/SHORT_LIST of the machines is searched by sorting it by load; a larger
/// one by walking all machines in load order and skipping those outside the pool.
const SHORT_LIST: usize = 4;

/// Machines a unit may go to before looking at who is on them.
enum Pool {
    All,
    /// Sorted machine indices, and a membership table when the list is long.
    Listed(Rc<Vec<MachineIx>>, Option<Rc<Membership>>),
}

/// Why a placed unit is on its machine.
#[derive(Clone)]
enum Chosen {
    /// It was there and still fits (placed units stay put).
    Kept,
    /// The least loaded machine that took it, with `load` units there before it, out of the
    /// machines `scope` names.
    LeastLoaded { load: u32, scope: String },
}

/// Why a machine is not fit for a unit right now.
enum Block {
    /// A unit there conflicts with this one.
    Conflict(UnitIx),
    /// A unit there replaces this one.
    ReplacedBy(UnitIx),
    /// Pushing off the units this one replaces there would take its own MachineOf target along.
    WouldEvictTarget(UnitIx),
    /// This pass has moved replaced units as often as it allows.
    EvictionBudget,
    /// The machine is drained: it takes no new units.
    Drained,
}

struct Pass<'a> {
    machines: IxVec<MachineIx, &'a MachineState>,
    rel: &'a Relations<'a>,
    /// Machine of each placed schedulable unit.
    at: IxVec<UnitIx, Option<MachineIx>>,
    /// Schedulable units on each machine.
    on: IxVec<MachineIx, Vec<UnitIx>>,
    /// Global units running on each machine, by name.
    globals_on: IxVec<MachineIx, Vec<UnitIx>>,
    /// Machines each global unit runs on, sorted.
    global_machines: IxVec<UnitIx, Vec<MachineIx>>,
    /// (load, machine): the least loaded machine first, ties by id.
    loads: BTreeSet<(u32, MachineIx)>,
    reasons: IxVec<UnitIx, Option<String>>,
    /// Why each placed unit is where it is, kept for explanations (cheap: no text is made
    /// unless one is asked for).
    chosen: IxVec<UnitIx, Option<Chosen>>,
    metadata_pools: HashMap<&'a Metadata, MachineSet>,
    /// Replaced units this pass may still move; a safety net against Replaces and MachineOf
    /// combinations that would otherwise push units around without end.
    evictions_left: usize,
    evicted_in_round: bool,
    /// Reasons of units that found no machine, by what decided it (see `failure_key`).
    failures: HashMap<FailureKey<'a>, String>,
    /// Drained machines (see [`super::Drain`]).
    drained: Membership,
    /// What the drain step did with each unit of a drained machine it looked at.
    drained_units: Vec<(UnitIx, MachineIx, DrainStatus)>,
}

#[derive(PartialEq, Eq, Hash)]
struct FailureKey<'a> {
    own: &'a [GlobIx],
    matched_by: &'a [GlobIx],
    machine_id: Option<&'a str>,
    metadata: &'a Metadata,
    global_targets: &'a [UnitIx],
}

impl<'a> Pass<'a> {
    fn new(machines: IxVec<MachineIx, &'a MachineState>, rel: &'a Relations<'a>) -> Pass<'a> {
        let n = rel.units.len();
        let m = machines.len();
        Pass {
            loads: machines.indices().map(|i| (0, i)).collect(),
            machines,
            rel,
            at: IxVec::filled(n, None),
            on: IxVec::filled(m, Vec::new()),
            globals_on: IxVec::filled(m, Vec::new()),
            global_machines: IxVec::filled(n, Vec::new()),
            reasons: IxVec::filled(n, None),
            chosen: IxVec::filled(n, None),
            metadata_pools: HashMap::new(),
            evictions_left: 4 * n + 16,
            evicted_in_round: false,
            failures: HashMap::new(),
            drained: IxVec::filled(m, false),
            drained_units: Vec::new(),
        }
    }

    fn load(&self, m: MachineIx) -> u32 {
        (self.on[m].len() + self.globals_on[m].len()) as u32
    }

    fn set_placed(&mut self, u: UnitIx, m: MachineIx) {
        let load = self.load(m);
        self.loads.remove(&(load, m));
        self.on[m].push(u);
        self.loads.insert((load + 1, m));
        self.at[u] = Some(m);
    }

    fn set_unplaced(&mut self, u: UnitIx) {
        let Some(m) = self.at[u].take() else {
            return;
        };
        self.chosen[u] = None;
        let load = self.load(m);
        self.loads.remove(&(load, m));
        self.on[m].retain(|&v| v != u);
        // Room was made: earlier failures prove nothing any more.
        self.failures.clear();
        self.loads.insert((load - 1, m));
    }

    fn runs_global(&self, g: UnitIx, m: MachineIx) -> bool {
        self.global_machines[g].binary_search(&m).is_ok()
    }

    /// fleet 6.5: a global unit runs on every machine its metadata matches, unless a global unit
    /// whose name sorts earlier and that already runs there conflicts with it.
    fn place_globals(&mut self) {
        let rel = self.rel;
        for g in rel.units.indices() {
            if rel.kind[g] != Kind::Global {
                continue;
            }
            let c = &rel.conflicts;
            for m in self.machines.indices() {
                if !metadata_matches(
                    &rel.units[g].requirements.machine_metadata,
                    &self.machines[m].metadata,
                ) {
                    continue;
                }
                let here = &self.globals_on[m];
                let blocked = c.involved(g)
                    && if c.peer_bound(g) < here.len() {
                        c.peers(g)
                            .any(|h| rel.kind[h] == Kind::Global && self.runs_global(h, m))
                    } else {
                        here.iter().any(|&h| c.conflict(g, h))
                    };
                if blocked {
                    continue;
                }
                self.globals_on[m].push(g);
                self.global_machines[g].push(m);
            }
        }
        // Loads are counted once at the end rather than moved in the ordered set for each of
        // the (global unit, machine) pairs: that set is only read by the placements after.
        self.loads = self.machines.indices().map(|m| (self.load(m), m)).collect();
    }

    /// Whether `u` may stay on `m` judged by `m` and the global units alone.
    fn static_fit(&self, u: UnitIx, m: MachineIx) -> bool {
        let rel = self.rel;
        let req = &rel.units[u].requirements;
        let machine = self.machines[m];
        rel.cycle[u].is_none()
            && rel.dead_targets[u].is_empty()
            && req
                .machine_id
                .as_deref()
                .is_none_or(|id| machine.matches_id(id))
            && metadata_matches(&req.machine_metadata, &machine.metadata)
            && rel.global_targets[u]
                .iter()
                .all(|&g| self.runs_global(g, m))
            && !(rel.conflicts.involved(u)
                && self.globals_on[m]
                    .iter()
                    .any(|&g| rel.conflicts.conflict(u, g)))
            && rel.group[u]
                .iter()
                .all(|&v| self.member_fits(u, v, m, false))
    }

    /// Whether `v`, a member of the dependency group anchored at `anchor`, could run on `m`
    /// by its MachineID, MachineMetadata, global MachineOf targets and the global units
    /// there, and, with `now`, the units placed there outside the group. The anchor is placed
    /// only where its whole group fits, or the group would be split by its first member.
    fn member_fits(&self, anchor: UnitIx, v: UnitIx, m: MachineIx, now: bool) -> bool {
        let rel = self.rel;
        let req = &rel.units[v].requirements;
        let machine = self.machines[m];
        let c = &rel.conflicts;
        req.machine_id
            .as_deref()
            .is_none_or(|id| machine.matches_id(id))
            && metadata_matches(&req.machine_metadata, &machine.metadata)
            && rel.global_targets[v]
                .iter()
                .all(|&g| self.runs_global(g, m))
            && !(c.involved(v)
                && (self.globals_on[m].iter().any(|&g| c.conflict(v, g))
                    || (now
                        && self.on[m]
                            .iter()
                            .any(|&w| !rel.in_group(anchor, w) && c.conflict(v, w)))))
    }

    /// Narrows the pool of the anchor of a dependency group to the machines where every
    /// member fits too; the reason names the member that fits on none of them.
    fn group_pool(&self, u: UnitIx, pool: Pool, scope: String) -> Result<(Pool, String), String> {
        let rel = self.rel;
        // Members with no constraint of their own fit wherever the anchor does (the usual
        // case): the anchor's pool stays as it is, and so does the cost of placing it.
        let constrained = |v: UnitIx| {
            let req = &rel.units[v].requirements;
            req.machine_id.is_some()
                || !req.machine_metadata.is_empty()
                || !rel.global_targets[v].is_empty()
                || rel.conflicts.involved(v)
        };
        if !rel.group[u].iter().any(|&v| constrained(v)) {
            return Ok((pool, scope));
        }
        let mut list: Vec<MachineIx> = match &pool {
            Pool::All => self.machines.indices().collect(),
            Pool::Listed(list, _) => list.to_vec(),
        };
        for &v in rel.group[u].iter().filter(|&&v| constrained(v)) {
            list.retain(|&m| self.member_fits(u, v, m, true));
            if list.is_empty() {
                return Err(format!(
                    "no machine it may use can also run {}",
                    rel.relation(u, v)
                ));
            }
        }
        Ok((
            Pool::Listed(Rc::new(list), None),
            format!("{scope} that also fits its dependency group"),
        ))
    }

    /// Re-evaluates current placements: a placement is kept while its machine exists, its unit
    /// still fits there, and its MachineOf targets stay with it. Of two placed units that conflict,
    /// the one whose name sorts later goes; a replaced unit goes, whatever its name.
    fn keep(&mut self, placements: &BTreeMap<String, String>) {
        let rel = self.rel;
        let n = rel.units.len();
        let mut cand_at: IxVec<UnitIx, Option<MachineIx>> = IxVec::filled(n, None);
        let mut by_machine: IxVec<MachineIx, Vec<UnitIx>> =
            IxVec::filled(self.machines.len(), Vec::new());
        let machine_index: HashMap<&str, MachineIx> = self
            .machines
            .iter_enumerated()
            .map(|(i, m)| (m.id.as_str(), i))
            .collect();
        // Units and placements are both sorted by name: walk them side by side.
        let mut placed = placements.iter().peekable();
        for (u, unit) in rel.units.iter_enumerated() {
            while placed
                .next_if(|(name, _)| name.as_str() < unit.name.as_str())
                .is_some()
            {}
            let Some((_, id)) = placed.next_if(|(name, _)| **name == unit.name) else {
                continue;
            };
            if rel.kind[u] != Kind::Schedulable {
                continue;
            }
            let Some(&m) = machine_index.get(id.as_str()) else {
                continue;
            };
            if self.static_fit(u, m) {
                cand_at[u] = Some(m);
                by_machine[m].push(u);
            }
        }
        // Dropping a unit for its MachineOf can undo the conflict that displaced another unit,
        // so conflicts are settled again from scratch until MachineOf drops nothing more.
        let mut kept: IxVec<UnitIx, bool> = IxVec::filled(n, false);
        loop {
            kept.iter_mut().for_each(|k| *k = false);
            for (m, here) in by_machine.iter_enumerated() {
                let mut stays: Vec<UnitIx> = Vec::new();
                for &u in here {
                    if cand_at[u].is_none() {
                        continue;
                    }
                    let replaced = rel.replaced_by[u].iter().any(|&j| cand_at[j] == Some(m));
                    let c = &rel.conflicts;
                    let conflicted = c.involved(u)
                        && if c.peer_bound(u) < stays.len() {
                            c.peers(u).any(|v| kept[v] && cand_at[v] == Some(m))
                        } else {
                            stays.iter().any(|&v| c.conflict(u, v))
                        };
                    if !replaced && !conflicted {
                        stays.push(u);
                        kept[u] = true;
                    }
                }
            }
            let mut dropped = false;
            for &u in &rel.order {
                if kept[u]
                    && rel.targets[u]
                        .iter()
                        .any(|&t| !kept[t] || cand_at[t] != cand_at[u])
                {
                    kept[u] = false;
                    cand_at[u] = None;
                    dropped = true;
                }
            }
            if !dropped {
                break;
            }
        }
        for u in kept.indices() {
            if let (true, Some(m)) = (kept[u], cand_at[u]) {
                self.set_placed(u, m);
                self.chosen[u] = Some(Chosen::Kept);
            }
        }
    }

    /// Places every schedulable unit that is not placed, targets before followers.
    fn place_all(&mut self) {
        let rel = self.rel;
        let mut queue: BinaryHeap<Reverse<(u32, UnitIx)>> = rel
            .order
            .iter()
            .filter(|&&u| self.at[u].is_none())
            .map(|&u| Reverse((rel.rank[u], u)))
            .collect();
        loop {
            self.evicted_in_round = false;
            while let Some(Reverse((_, u))) = queue.pop() {
                if self.at[u].is_some() {
                    continue;
                }
                match self.place_one(u) {
                    Ok(evicted) => {
                        self.reasons[u] = None;
                        for v in evicted {
                            queue.push(Reverse((rel.rank[v], v)));
                        }
                    }
                    Err(reason) => self.reasons[u] = Some(reason),
                }
            }
            // Moving a replaced unit can free room a unit found no room in earlier.
            if !self.evicted_in_round {
                break;
            }
            queue.extend(
                rel.order
                    .iter()
                    .filter(|&&u| self.at[u].is_none())
                    .map(|&u| Reverse((rel.rank[u], u))),
            );
        }
    }

    /// Why `u` can go on no machine at all, whatever their state: a MachineOf cycle, or a
    /// MachineOf target that is not scheduled. Placement and its explanation share it.
    fn unplaceable(&self, u: UnitIx) -> Option<String> {
        let rel = self.rel;
        if let Some(cycle) = &rel.cycle[u] {
            return Some(cycle.clone());
        }
        let dead = rel.dead_targets[u].first()?;
        let known = rel
            .units
            .as_slice()
            .binary_search_by(|x| x.name.as_str().cmp(dead))
            .is_ok();
        // A known target that is not scheduled is inactive, a template, or itself unplaceable.
        let why = if known {
            "is not scheduled"
        } else {
            "does not exist"
        };
        Some(format!("MachineOf target {dead} {why}"))
    }

    /// Places `u`; returns the units it pushed off (now unplaced) or why it can't be placed.
    fn place_one(&mut self, u: UnitIx) -> Result<Vec<UnitIx>, String> {
        if self.machines.is_empty() {
            return Err("no machines".to_string());
        }
        if let Some(why) = self.unplaceable(u) {
            return Err(why);
        }
        let (pool, scope) = self.pool(u)?;
        let (pool, scope) = self.group_pool(u, pool, scope)?;
        let key = self.failure_key(u);
        if let Some(reason) = key.as_ref().and_then(|k| self.failures.get(k)) {
            return Err(reason.clone());
        }
        let chosen = match &pool {
            Pool::All => self.first_fit(u, |_| true),
            Pool::Listed(list, Some(member)) if list.len() * SHORT_LIST > self.machines.len() => {
                self.first_fit(u, |m| member[m])
            }
            Pool::Listed(list, _) => {
                let mut by_load: Vec<(u32, MachineIx)> =
                    list.iter().map(|&m| (self.load(m), m)).collect();
                by_load.sort_unstable();
                by_load
                    .into_iter()
                    .find_map(|(_, m)| self.fit(u, m).ok().map(|ev| (m, ev)))
            }
        };
        let Some((m, evicted)) = chosen else {
            let reason = self.explain(u, &pool, &scope);
            if let Some(k) = key {
                self.failures.insert(k, reason.clone());
            }
            return Err(reason);
        };
        for &v in &evicted {
            self.set_unplaced(v);
        }
        if !evicted.is_empty() {
            self.evicted_in_round = true;
            self.evictions_left = self.evictions_left.saturating_sub(evicted.len());
        }
        self.chosen[u] = Some(Chosen::LeastLoaded {
            load: self.load(m),
            scope,
        });
        self.set_placed(u, m);
        Ok(evicted)
    }

    /// When units conflict with the same others and have the same requirements, one failing
    /// to find a machine means the next fails too, as long as nothing was taken off a machine
    /// since: searching all machines again for each of them would make a large group of
    /// mutually conflicting units quadratic. Units with Replaces or MachineOf on a
    /// non-global unit have no key (they see more than conflicts).
    fn failure_key(&self, u: UnitIx) -> Option<FailureKey<'a>> {
        let rel = self.rel;
        let simple = rel.conflicts.involved(u)
            && rel.targets[u].is_empty()
            && rel.group[u].is_empty()
            && rel.replaces[u].is_empty()
            && rel.replaced_by[u].is_empty();
        simple.then(|| {
            let (own, matched_by) = rel.conflicts.signature(u);
            let req = &rel.units[u].requirements;
            FailureKey {
                own,
                matched_by,
                machine_id: req.machine_id.as_deref(),
                metadata: &req.machine_metadata,
                global_targets: &rel.global_targets[u],
            }
        })
    }

    fn first_fit(
        &self,
        u: UnitIx,
        member: impl Fn(MachineIx) -> bool,
    ) -> Option<(MachineIx, Vec<UnitIx>)> {
        self.loads
            .iter()
            .filter(|&&(_, m)| member(m))
            .find_map(|&(_, m)| self.fit(u, m).ok().map(|ev| (m, ev)))
    }

    /// The machines `u` may go to by its MachineOf, MachineID and MachineMetadata, and how to
    /// name them in a reason.
    fn pool(&mut self, u: UnitIx) -> Result<(Pool, String), String> {
        let rel = self.rel;
        let req = &rel.units[u].requirements;
        let metadata = &req.machine_metadata;
        let fits_statically = |p: &Pass, m: MachineIx| {
            let machine = p.machines[m];
            req.machine_id
                .as_deref()
                .is_none_or(|id| machine.matches_id(id))
                && metadata_matches(metadata, &machine.metadata)
                && rel.global_targets[u].iter().all(|&g| p.runs_global(g, m))
        };

        if let Some((&first, rest)) = rel.targets[u].split_first() {
            let Some(m) = self.at[first] else {
                return Err(format!("{} is not scheduled", rel.peer(u, first)));
            };
            for &t in rest {
                match self.at[t] {
                    None => return Err(format!("{} is not scheduled", rel.peer(u, t))),
                    Some(other) if other != m => {
                        return Err(format!(
                            "{} and {} are on different machines",
                            rel.peer(u, first),
                            rel.peer(u, t)
                        ))
                    }
                    Some(_) => {}
                }
            }
            let id = &self.machines[m].id;
            if !fits_statically(self, m) {
                return Err(format!(
                    "machine {id} of {} does not fit: {}",
                    rel.peer(u, first),
                    self.static_misfit(u, m)
                ));
            }
            return Ok((
                Pool::Listed(Rc::new(vec![m]), None),
                format!("on machine {id} of {}", rel.peer(u, first)),
            ));
        }

        let mut list: Option<Vec<MachineIx>> = None;
        if let Some(id) = &req.machine_id {
            let found = self.machines_matching_id(id);
            if found.is_empty() {
                return Err(format!("MachineID {id} matches no machine"));
            }
            list = Some(found);
        }
        let mut member = None;
        if !metadata.is_empty() {
            let (with_metadata, table) = self.metadata_pool(metadata);
            match &mut list {
                Some(l) => l.retain(|&m| table[m]),
                None => {
                    list = Some(with_metadata.to_vec());
                    member = Some(table);
                }
            }
            if list.as_ref().is_some_and(Vec::is_empty) {
                return Err(match &req.machine_id {
                    Some(id) => format!(
                        "MachineID {id} matches no machine with MachineMetadata {}",
                        show_metadata(metadata)
                    ),
                    None => format!(
                        "no machine matches MachineMetadata {}",
                        show_metadata(metadata)
                    ),
                });
            }
        }
        for &g in &rel.global_targets[u] {
            let runs = &self.global_machines[g];
            let l = list.get_or_insert_with(|| runs.clone());
            l.retain(|m| runs.binary_search(m).is_ok());
            member = None;
            if l.is_empty() {
                return Err(format!(
                    "MachineOf target {} (global) runs on no machine this unit may use",
                    rel.name(g)
                ));
            }
        }
        Ok(match list {
            None => (Pool::All, "on every machine".to_string()),
            Some(l) if l.len() == 1 => {
                let scope = format!("on machine {}", self.machines[l[0]].id);
                (Pool::Listed(Rc::new(l), None), scope)
            }
            Some(l) => {
                if member.is_none() && l.len() * SHORT_LIST > self.machines.len() {
                    let mut table: Membership = IxVec::filled(self.machines.len(), false);
                    l.iter().for_each(|&m| table[m] = true);
                    member = Some(Rc::new(table));
                }
                (
                    Pool::Listed(Rc::new(l), member),
                    "on every machine it may use".to_string(),
                )
            }
        })
    }

    /// fleet's `MatchID` over the sorted ids: the full id, or every id an 8-character id starts.
    fn machines_matching_id(&self, id: &str) -> Vec<MachineIx> {
        let machines = self.machines.as_slice();
        let start = machines.partition_point(|m| m.id.as_str() < id);
        machines[start..]
            .iter()
            .take_while(|m| m.id.starts_with(id))
            .enumerate()
            .filter(|(_, m)| m.matches_id(id))
            .map(|(i, _)| MachineIx::new(start + i))
            .collect()
    }

    /// Machines matching `metadata` (list and membership table), computed once per distinct
    /// requirement.
    fn metadata_pool(&mut self, metadata: &'a Metadata) -> MachineSet {
        let machines = &self.machines;
        let (list, table) = self.metadata_pools.entry(metadata).or_insert_with(|| {
            let table: Membership = machines
                .iter()
                .map(|m| metadata_matches(metadata, &m.metadata))
                .collect();
            let list: Vec<MachineIx> = machines.indices().filter(|&m| table[m]).collect();
            (Rc::new(list), Rc::new(table))
        });
        (Rc::clone(list), Rc::clone(table))
    }

    /// What of its own requirements `u` misses on `m`.
    fn static_misfit(&self, u: UnitIx, m: MachineIx) -> String {
        let rel = self.rel;
        let req = &rel.units[u].requirements;
        let machine = self.machines[m];
        if let Some(id) = req
            .machine_id
            .as_deref()
            .filter(|id| !machine.matches_id(id))
        {
            return format!("MachineID is {id}");
        }
        if !metadata_matches(&req.machine_metadata, &machine.metadata) {
            return format!(
                "MachineMetadata {} does not match",
                show_metadata(&req.machine_metadata)
            );
        }
        match rel.global_targets[u]
            .iter()
            .find(|&&g| !self.runs_global(g, m))
        {
            Some(&g) => format!("global MachineOf target {} does not run there", rel.name(g)),
            None => "unknown".to_string(),
        }
    }

    /// Whether `u` can go on `m` now, given who is there; Ok holds the units it would push off.
    fn fit(&self, u: UnitIx, m: MachineIx) -> Result<Vec<UnitIx>, Block> {
        if self.drained[m] {
            return Err(Block::Drained);
        }
        let rel = self.rel;
        let c = &rel.conflicts;
        if c.involved(u) {
            let here = self.on[m].len() + self.globals_on[m].len();
            let found = if c.peer_bound(u) < here {
                c.peers(u).find(|&v| match rel.kind[v] {
                    Kind::Global => self.runs_global(v, m),
                    Kind::Schedulable => self.at[v] == Some(m),
                    Kind::Inert => false,
                })
            } else {
                self.on[m]
                    .iter()
                    .chain(&self.globals_on[m])
                    .copied()
                    .find(|&v| c.conflict(u, v))
            };
            if let Some(v) = found {
                return Err(Block::Conflict(v));
            }
        }
        if let Some(&j) = rel.replaced_by[u].iter().find(|&&j| self.at[j] == Some(m)) {
            return Err(Block::ReplacedBy(j));
        }
        let mut evict: Vec<UnitIx> = rel.replaces[u]
            .iter()
            .copied()
            .filter(|&r| self.at[r] == Some(m))
            .collect();
        if evict.is_empty() {
            return Ok(evict);
        }
        if self.evictions_left < evict.len() {
            return Err(Block::EvictionBudget);
        }
        // Followers of a pushed-off unit go with it.
        let mut i = 0;
        while i < evict.len() {
            for &f in &rel.followers[evict[i]] {
                if self.at[f] == Some(m) && !evict.contains(&f) {
                    evict.push(f);
                }
            }
            i += 1;
        }
        if let Some(&t) = rel.targets[u].iter().find(|t| evict.contains(t)) {
            return Err(Block::WouldEvictTarget(t));
        }
        Ok(evict)
    }

    /// The reason for a unit no machine of its pool takes.
    fn explain(&self, u: UnitIx, pool: &Pool, scope: &str) -> String {
        let rel = self.rel;
        let machines: Vec<MachineIx> = match pool {
            Pool::All => self.machines.indices().collect(),
            Pool::Listed(list, _) => list.to_vec(),
        };
        let mut conflicts = BTreeSet::new();
        let mut replacers = BTreeSet::new();
        let mut targets = BTreeSet::new();
        let mut budget = false;
        let mut drained = BTreeSet::new();
        for m in machines {
            match self.fit(u, m) {
                Err(Block::Drained) => {
                    drained.insert(self.machines[m].id.as_str());
                }
                Ok(_) => {}
                Err(Block::Conflict(v)) => {
                    conflicts.insert(rel.name(v));
                }
                Err(Block::ReplacedBy(j)) => {
                    replacers.insert(rel.name(j));
                }
                Err(Block::WouldEvictTarget(t)) => {
                    targets.insert(rel.name(t));
                }
                Err(Block::EvictionBudget) => budget = true,
            }
        }
        let mut parts = Vec::new();
        if !conflicts.is_empty() {
            parts.push(format!("conflicts with {}", show_names(&conflicts)));
        }
        if !replacers.is_empty() {
            parts.push(format!("is replaced by {}", show_names(&replacers)));
        }
        if !targets.is_empty() {
            parts.push(format!(
                "would push off its MachineOf target {}",
                show_names(&targets)
            ));
        }
        if budget {
            parts.push("would push off units this pass already moved".to_string());
        }
        match drained.len() {
            0 => {}
            1 => parts.push(format!("machine {} is drained", show_names(&drained))),
            _ => parts.push(format!("machines {} are drained", show_names(&drained))),
        }
        format!("{} {scope}", parts.join("; "))
    }

    /// The drain step, after every other decision: moves one unit (with its MachineOf
    /// followers) off a drained machine, unless `busy` (one is in motion already). With
    /// `survey`, the units that do not move are tried too and put back, to report which could.
    fn drain(&mut self, busy: bool, survey: bool) {
        let rel = self.rel;
        let mut moved = busy;
        let mut decided: IxVec<UnitIx, bool> = IxVec::filled(rel.units.len(), false);
        let drained: Vec<MachineIx> = self
            .machines
            .indices()
            .filter(|&m| self.drained[m])
            .collect();
        for m in drained {
            // Unit indices follow unit names, so units go in name order.
            let mut here = self.on[m].clone();
            here.sort_unstable();
            for u in here {
                if decided[u] || self.at[u] != Some(m) {
                    continue;
                }
                // Units tied by MachineOf on this machine move together or not at all.
                let group = self.group(u, m);
                let pinned = group
                    .iter()
                    .copied()
                    .find(|&v| rel.units[v].requirements.machine_id.is_some());
                let (status, cause) = if let Some(p) = pinned {
                    let id = rel.units[p]
                        .requirements
                        .machine_id
                        .as_deref()
                        .unwrap_or("");
                    (
                        DrainStatus::Stays(format!("MachineID={id} keeps it on this machine")),
                        p,
                    )
                } else if moved && !survey {
                    (DrainStatus::Waits, group[0])
                } else {
                    let status = match self.try_move(&group, m) {
                        Ok(to) if !moved => {
                            moved = true;
                            DrainStatus::Moves(self.machines[to].id.clone())
                        }
                        Ok(_) => {
                            self.put_back(&group, m);
                            DrainStatus::Waits
                        }
                        Err(why) => DrainStatus::Stays(why),
                    };
                    (status, group[0])
                };
                for &v in &group {
                    decided[v] = true;
                    let status = match &status {
                        DrainStatus::Stays(_) if v != cause => DrainStatus::Stays(format!(
                            "moves only with {} (MachineOf), which stays",
                            rel.name(cause)
                        )),
                        _ => status.clone(),
                    };
                    self.drained_units.push((v, m, status));
                }
            }
        }
        self.drained_units.sort_by_key(|&(u, m, _)| (m, u));
        // Trial placements leave cached failures that say nothing about the final state.
        self.failures.clear();
    }

    /// The units on `m` tied to `u` by MachineOf (either way, transitively), targets first.
    fn group(&self, u: UnitIx, m: MachineIx) -> Vec<UnitIx> {
        let rel = self.rel;
        let mut group = vec![u];
        let mut i = 0;
        while i < group.len() {
            let v = group[i];
            for &w in rel.followers[v].iter().chain(&rel.targets[v]) {
                if self.at[w] == Some(m) && !group.contains(&w) {
                    group.push(w);
                }
            }
            i += 1;
        }
        group.sort_by_key(|&v| (rel.rank[v], v));
        group
    }

    /// Moves `group` off `m` to where the pass places it, pushing nothing off; the machine its
    /// first unit went to, or why it cannot move (and then it is back on `m`).
    fn try_move(&mut self, group: &[UnitIx], m: MachineIx) -> Result<MachineIx, String> {
        let rel = self.rel;
        for &v in group.iter().rev() {
            self.set_unplaced(v);
        }
        let mut placed: Vec<UnitIx> = Vec::new();
        let mut failure = None;
        for &v in group {
            match self.place_one(v) {
                Ok(evicted) if evicted.is_empty() => placed.push(v),
                Ok(evicted) => {
                    let to = self.at[v];
                    self.set_unplaced(v);
                    if let Some(to) = to {
                        for &e in &evicted {
                            self.set_placed(e, to);
                            self.chosen[e] = Some(Chosen::Kept);
                        }
                    }
                    let names: Vec<&str> = evicted.iter().map(|&e| rel.name(e)).collect();
                    failure = Some(format!(
                        "{} would push off {} (Replaces)",
                        rel.name(v),
                        names.join(", ")
                    ));
                    break;
                }
                Err(why) => {
                    failure = Some(if v == group[0] {
                        why
                    } else {
                        format!("its MachineOf follower {} {why}", rel.name(v))
                    });
                    break;
                }
            }
        }
        match (failure, placed.first().and_then(|&v| self.at[v])) {
            (None, Some(to)) => Ok(to),
            (failure, _) => {
                for &v in placed.iter().rev() {
                    self.set_unplaced(v);
                }
                self.put_back(group, m);
                Err(failure.unwrap_or_else(|| "no machine takes it".to_string()))
            }
        }
    }

    /// Puts `group`, moved by [`Pass::try_move`], back on `m` as it was.
    fn put_back(&mut self, group: &[UnitIx], m: MachineIx) {
        for &v in group {
            self.set_unplaced(v);
        }
        for &v in group {
            self.set_placed(v, m);
            self.chosen[v] = Some(Chosen::Kept);
        }
    }

    fn into_plan(self, placements: &BTreeMap<String, String>) -> Plan {
        let rel = self.rel;
        let mut plan = Plan::default();
        // Units and placements are both sorted by name: walk them side by side.
        let mut placed = placements.iter().peekable();
        for (u, at) in self.at.iter_enumerated() {
            let name = rel.name(u);
            while let Some((gone, m)) = placed.next_if(|(n, _)| n.as_str() < name) {
                plan.remove.push(Placement::new(gone, m));
            }
            let before = placed
                .next_if(|(n, _)| n.as_str() == name)
                .map(|(_, m)| m.as_str());
            let after = at.map(|m| self.machines[m].id.as_str());
            if before != after {
                if let Some(m) = before {
                    plan.remove.push(Placement::new(name, m));
                }
                if let Some(m) = after {
                    plan.add.push(Placement::new(name, m));
                }
            }
        }
        for (gone, m) in placed {
            plan.remove.push(Placement::new(gone, m));
        }
        for (u, reason) in self.reasons.into_iter_enumerated() {
            if let (Some(reason), None) = (reason, self.at[u]) {
                plan.unplaceable.insert(rel.name(u).to_string(), reason);
            }
        }
        plan
    }
}

/// `region=east|west, disk=ssd`
fn show_metadata(required: &Metadata) -> String {
    let parts: Vec<String> = required
        .iter()
        .map(|(k, vs)| {
            format!(
                "{k}={}",
                vs.iter().map(String::as_str).collect::<Vec<_>>().join("|")
            )
        })
        .collect();
    parts.join(", ")
}

/// Up to three names, then how many more.
fn show_names(names: &BTreeSet<&str>) -> String {
    const SHOWN: usize = 3;
    let mut text = names
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

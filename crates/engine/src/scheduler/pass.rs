//! One scheduling pass: keep what still fits, then place what is not placed.

use super::relations::{Kind, Relations};
use super::{Cluster, Placement, Plan};
use registry::MachineState;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::rc::Rc;
use unit::metadata_matches;

type Metadata = BTreeMap<String, BTreeSet<String>>;
/// Machines as a sorted index list and a membership table.
type MachineSet = (Rc<Vec<u32>>, Rc<Vec<bool>>);

pub(super) fn run(cluster: &Cluster) -> Plan {
    let mut machines: Vec<&MachineState> = cluster.machines.iter().collect();
    if !machines.is_sorted_by(|a, b| a.id <= b.id) {
        machines.sort_by(|a, b| a.id.cmp(&b.id));
    }
    machines.dedup_by(|later, first| later.id == first.id);
    let rel = Relations::build(&cluster.units);
    let mut pass = Pass::new(machines, &rel);
    pass.place_globals();
    pass.keep(&cluster.placements);
    pass.place_all();
    pass.into_plan(&cluster.placements)
}

/// A pool of at most 1/SHORT_LIST of the machines is searched by sorting it by load; a larger
/// one by walking all machines in load order and skipping those outside the pool.
const SHORT_LIST: usize = 4;

/// Machines a unit may go to before looking at who is on them.
enum Pool {
    All,
    /// Sorted machine indices, and a membership table when the list is long.
    Listed(Rc<Vec<u32>>, Option<Rc<Vec<bool>>>),
}

/// Why a machine is not fit for a unit right now.
enum Block {
    /// A unit there conflicts with this one.
    Conflict(u32),
    /// A unit there replaces this one.
    ReplacedBy(u32),
    /// Pushing off the units this one replaces there would take its own MachineOf target along.
    WouldEvictTarget(u32),
    /// This pass has moved replaced units as often as it allows.
    EvictionBudget,
}

struct Pass<'a> {
    machines: Vec<&'a MachineState>,
    rel: &'a Relations<'a>,
    /// Machine of each placed schedulable unit.
    at: Vec<Option<u32>>,
    /// Schedulable units on each machine.
    on: Vec<Vec<u32>>,
    /// Global units running on each machine, by name.
    globals_on: Vec<Vec<u32>>,
    /// Machines each global unit runs on, sorted.
    global_machines: Vec<Vec<u32>>,
    /// (load, machine): the least loaded machine first, ties by id.
    loads: BTreeSet<(u32, u32)>,
    reasons: Vec<Option<String>>,
    metadata_pools: HashMap<&'a Metadata, MachineSet>,
    /// Replaced units this pass may still move; a safety net against Replaces and MachineOf
    /// combinations that would otherwise push units around without end.
    evictions_left: usize,
    evicted_in_round: bool,
    /// Reasons of units that found no machine, by what decided it (see `failure_key`).
    failures: HashMap<FailureKey<'a>, String>,
}

#[derive(PartialEq, Eq, Hash)]
struct FailureKey<'a> {
    own: &'a [u32],
    matched_by: &'a [u32],
    machine_id: Option<&'a str>,
    metadata: &'a Metadata,
    global_targets: &'a [u32],
}

impl<'a> Pass<'a> {
    fn new(machines: Vec<&'a MachineState>, rel: &'a Relations<'a>) -> Pass<'a> {
        let n = rel.units.len();
        let m = machines.len();
        Pass {
            machines,
            rel,
            at: vec![None; n],
            on: vec![Vec::new(); m],
            globals_on: vec![Vec::new(); m],
            global_machines: vec![Vec::new(); n],
            loads: (0..m as u32).map(|i| (0, i)).collect(),
            reasons: vec![None; n],
            metadata_pools: HashMap::new(),
            evictions_left: 4 * n + 16,
            evicted_in_round: false,
            failures: HashMap::new(),
        }
    }

    fn load(&self, m: u32) -> u32 {
        (self.on[m as usize].len() + self.globals_on[m as usize].len()) as u32
    }

    fn set_placed(&mut self, u: u32, m: u32) {
        let load = self.load(m);
        self.loads.remove(&(load, m));
        self.on[m as usize].push(u);
        self.loads.insert((load + 1, m));
        self.at[u as usize] = Some(m);
    }

    fn set_unplaced(&mut self, u: u32) {
        let Some(m) = self.at[u as usize].take() else {
            return;
        };
        let load = self.load(m);
        self.loads.remove(&(load, m));
        self.on[m as usize].retain(|&v| v != u);
        // Room was made: earlier failures prove nothing any more.
        self.failures.clear();
        self.loads.insert((load - 1, m));
    }

    fn runs_global(&self, g: u32, m: u32) -> bool {
        self.global_machines[g as usize].binary_search(&m).is_ok()
    }

    /// fleet 6.5: a global unit runs on every machine its metadata matches, unless a global unit
    /// whose name sorts earlier and that already runs there conflicts with it.
    fn place_globals(&mut self) {
        let rel = self.rel;
        for g in 0..rel.units.len() as u32 {
            if rel.kind[g as usize] != Kind::Global {
                continue;
            }
            let c = &rel.conflicts;
            for m in 0..self.machines.len() as u32 {
                if !metadata_matches(
                    &rel.units[g as usize].requirements.machine_metadata,
                    &self.machines[m as usize].metadata,
                ) {
                    continue;
                }
                let here = &self.globals_on[m as usize];
                let blocked = c.involved(g)
                    && if c.peer_bound(g) < here.len() {
                        c.peers(g)
                            .any(|h| rel.kind[h as usize] == Kind::Global && self.runs_global(h, m))
                    } else {
                        here.iter().any(|&h| c.conflict(g, h))
                    };
                if blocked {
                    continue;
                }
                let load = self.load(m);
                self.loads.remove(&(load, m));
                self.globals_on[m as usize].push(g);
                self.loads.insert((load + 1, m));
                self.global_machines[g as usize].push(m);
            }
        }
    }

    /// Whether `u` may stay on `m` judged by `m` and the global units alone.
    fn static_fit(&self, u: u32, m: u32) -> bool {
        let rel = self.rel;
        let req = &rel.units[u as usize].requirements;
        let machine = self.machines[m as usize];
        rel.cycle[u as usize].is_none()
            && rel.dead_targets[u as usize].is_empty()
            && req
                .machine_id
                .as_deref()
                .is_none_or(|id| machine.matches_id(id))
            && metadata_matches(&req.machine_metadata, &machine.metadata)
            && rel.global_targets[u as usize]
                .iter()
                .all(|&g| self.runs_global(g, m))
            && !(rel.conflicts.involved(u)
                && self.globals_on[m as usize]
                    .iter()
                    .any(|&g| rel.conflicts.conflict(u, g)))
    }

    /// Re-evaluates current placements: a placement is kept while its machine exists, its unit
    /// still fits there, and its MachineOf targets stay with it. Of two placed units that conflict,
    /// the one whose name sorts later goes; a replaced unit goes, whatever its name.
    fn keep(&mut self, placements: &BTreeMap<String, String>) {
        let rel = self.rel;
        let n = rel.units.len();
        let mut cand_at: Vec<Option<u32>> = vec![None; n];
        let mut by_machine: Vec<Vec<u32>> = vec![Vec::new(); self.machines.len()];
        let machine_index: HashMap<&str, u32> = self
            .machines
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id.as_str(), i as u32))
            .collect();
        // Units and placements are both sorted by name: walk them side by side.
        let mut placed = placements.iter().peekable();
        for (u, unit) in rel.units.iter().enumerate() {
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
            let m = m as usize;
            if self.static_fit(u as u32, m as u32) {
                cand_at[u] = Some(m as u32);
                by_machine[m].push(u as u32);
            }
        }
        // Dropping a unit for its MachineOf can undo the conflict that displaced another unit,
        // so conflicts are settled again from scratch until MachineOf drops nothing more.
        let mut kept = vec![false; n];
        loop {
            kept.iter_mut().for_each(|k| *k = false);
            for (m, here) in by_machine.iter().enumerate() {
                let mut stays: Vec<u32> = Vec::new();
                for &u in here {
                    let ui = u as usize;
                    if cand_at[ui].is_none() {
                        continue;
                    }
                    let replaced = rel.replaced_by[ui]
                        .iter()
                        .any(|&j| cand_at[j as usize] == Some(m as u32));
                    let c = &rel.conflicts;
                    let conflicted = c.involved(u)
                        && if c.peer_bound(u) < stays.len() {
                            c.peers(u)
                                .any(|v| kept[v as usize] && cand_at[v as usize] == Some(m as u32))
                        } else {
                            stays.iter().any(|&v| c.conflict(u, v))
                        };
                    if !replaced && !conflicted {
                        stays.push(u);
                        kept[ui] = true;
                    }
                }
            }
            let mut dropped = false;
            for &u in &rel.order {
                let ui = u as usize;
                if kept[ui]
                    && rel.targets[ui]
                        .iter()
                        .any(|&t| !kept[t as usize] || cand_at[t as usize] != cand_at[ui])
                {
                    kept[ui] = false;
                    cand_at[ui] = None;
                    dropped = true;
                }
            }
            if !dropped {
                break;
            }
        }
        for u in 0..n {
            if let (true, Some(m)) = (kept[u], cand_at[u]) {
                self.set_placed(u as u32, m);
            }
        }
    }

    /// Places every schedulable unit that is not placed, targets before followers.
    fn place_all(&mut self) {
        let rel = self.rel;
        let mut queue: BinaryHeap<Reverse<(u32, u32)>> = rel
            .order
            .iter()
            .filter(|&&u| self.at[u as usize].is_none())
            .map(|&u| Reverse((rel.rank[u as usize], u)))
            .collect();
        loop {
            self.evicted_in_round = false;
            while let Some(Reverse((_, u))) = queue.pop() {
                if self.at[u as usize].is_some() {
                    continue;
                }
                match self.place_one(u) {
                    Ok(evicted) => {
                        self.reasons[u as usize] = None;
                        for v in evicted {
                            queue.push(Reverse((rel.rank[v as usize], v)));
                        }
                    }
                    Err(reason) => self.reasons[u as usize] = Some(reason),
                }
            }
            // Moving a replaced unit can free room a unit found no room in earlier.
            if !self.evicted_in_round {
                break;
            }
            queue.extend(
                rel.order
                    .iter()
                    .filter(|&&u| self.at[u as usize].is_none())
                    .map(|&u| Reverse((rel.rank[u as usize], u))),
            );
        }
    }

    /// Places `u`; returns the units it pushed off (now unplaced) or why it can't be placed.
    fn place_one(&mut self, u: u32) -> Result<Vec<u32>, String> {
        let rel = self.rel;
        let ui = u as usize;
        if self.machines.is_empty() {
            return Err("no machines".to_string());
        }
        if let Some(cycle) = &rel.cycle[ui] {
            return Err(cycle.clone());
        }
        if let Some(dead) = rel.dead_targets[ui].first() {
            let known = rel
                .units
                .binary_search_by(|x| x.name.as_str().cmp(dead))
                .is_ok();
            return Err(if known {
                format!("MachineOf target {dead} is not scheduled")
            } else {
                format!("MachineOf target {dead} does not exist")
            });
        }
        let (pool, scope) = self.pool(u)?;
        let key = self.failure_key(u);
        if let Some(reason) = key.as_ref().and_then(|k| self.failures.get(k)) {
            return Err(reason.clone());
        }
        let chosen = match &pool {
            Pool::All => self.first_fit(u, |_| true),
            Pool::Listed(list, Some(member)) if list.len() * SHORT_LIST > self.machines.len() => {
                self.first_fit(u, |m| member[m as usize])
            }
            Pool::Listed(list, _) => {
                let mut by_load: Vec<(u32, u32)> =
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
        self.set_placed(u, m);
        Ok(evicted)
    }

    /// When units conflict with the same others and have the same requirements, one failing
    /// to find a machine means the next fails too, as long as nothing was taken off a machine
    /// since: searching all machines again for each of them would make a large group of
    /// mutually conflicting units quadratic. Units with Replaces or MachineOf on a
    /// non-global unit have no key (they see more than conflicts).
    fn failure_key(&self, u: u32) -> Option<FailureKey<'a>> {
        let rel = self.rel;
        let ui = u as usize;
        let simple = rel.conflicts.involved(u)
            && rel.targets[ui].is_empty()
            && rel.replaces[ui].is_empty()
            && rel.replaced_by[ui].is_empty();
        simple.then(|| {
            let (own, matched_by) = rel.conflicts.signature(u);
            let req = &rel.units[ui].requirements;
            FailureKey {
                own,
                matched_by,
                machine_id: req.machine_id.as_deref(),
                metadata: &req.machine_metadata,
                global_targets: &rel.global_targets[ui],
            }
        })
    }

    fn first_fit(&self, u: u32, member: impl Fn(u32) -> bool) -> Option<(u32, Vec<u32>)> {
        self.loads
            .iter()
            .filter(|&&(_, m)| member(m))
            .find_map(|&(_, m)| self.fit(u, m).ok().map(|ev| (m, ev)))
    }

    /// The machines `u` may go to by its MachineOf, MachineID and MachineMetadata, and how to
    /// name them in a reason.
    fn pool(&mut self, u: u32) -> Result<(Pool, String), String> {
        let rel = self.rel;
        let ui = u as usize;
        let req = &rel.units[ui].requirements;
        let metadata = &req.machine_metadata;
        let fits_statically = |p: &Pass, m: u32| {
            let machine = p.machines[m as usize];
            req.machine_id
                .as_deref()
                .is_none_or(|id| machine.matches_id(id))
                && metadata_matches(metadata, &machine.metadata)
                && rel.global_targets[ui].iter().all(|&g| p.runs_global(g, m))
        };

        if let Some((&first, rest)) = rel.targets[ui].split_first() {
            let Some(m) = self.at[first as usize] else {
                return Err(format!(
                    "MachineOf target {} is not scheduled",
                    rel.name(first)
                ));
            };
            for &t in rest {
                match self.at[t as usize] {
                    None => {
                        return Err(format!("MachineOf target {} is not scheduled", rel.name(t)))
                    }
                    Some(other) if other != m => {
                        return Err(format!(
                            "MachineOf targets {} and {} are on different machines",
                            rel.name(first),
                            rel.name(t)
                        ))
                    }
                    Some(_) => {}
                }
            }
            let id = &self.machines[m as usize].id;
            if !fits_statically(self, m) {
                return Err(format!(
                    "machine {id} of MachineOf target {} does not fit: {}",
                    rel.name(first),
                    self.static_misfit(u, m)
                ));
            }
            return Ok((
                Pool::Listed(Rc::new(vec![m]), None),
                format!("on machine {id} of MachineOf target {}", rel.name(first)),
            ));
        }

        let mut list: Option<Vec<u32>> = None;
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
                Some(l) => l.retain(|&m| table[m as usize]),
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
        for &g in &rel.global_targets[ui] {
            let runs = &self.global_machines[g as usize];
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
                let scope = format!("on machine {}", self.machines[l[0] as usize].id);
                (Pool::Listed(Rc::new(l), None), scope)
            }
            Some(l) => {
                if member.is_none() && l.len() * SHORT_LIST > self.machines.len() {
                    let mut table = vec![false; self.machines.len()];
                    l.iter().for_each(|&m| table[m as usize] = true);
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
    fn machines_matching_id(&self, id: &str) -> Vec<u32> {
        let start = self.machines.partition_point(|m| m.id.as_str() < id);
        self.machines[start..]
            .iter()
            .take_while(|m| m.id.starts_with(id))
            .enumerate()
            .filter(|(_, m)| m.matches_id(id))
            .map(|(i, _)| (start + i) as u32)
            .collect()
    }

    /// Machines matching `metadata` (list and membership table), computed once per distinct
    /// requirement.
    fn metadata_pool(&mut self, metadata: &'a Metadata) -> MachineSet {
        let machines = &self.machines;
        let (list, table) = self.metadata_pools.entry(metadata).or_insert_with(|| {
            let table: Vec<bool> = machines
                .iter()
                .map(|m| metadata_matches(metadata, &m.metadata))
                .collect();
            let list: Vec<u32> = (0..machines.len() as u32)
                .filter(|&m| table[m as usize])
                .collect();
            (Rc::new(list), Rc::new(table))
        });
        (Rc::clone(list), Rc::clone(table))
    }

    /// What of its own requirements `u` misses on `m`.
    fn static_misfit(&self, u: u32, m: u32) -> String {
        let rel = self.rel;
        let req = &rel.units[u as usize].requirements;
        let machine = self.machines[m as usize];
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
        match rel.global_targets[u as usize]
            .iter()
            .find(|&&g| !self.runs_global(g, m))
        {
            Some(&g) => format!("global MachineOf target {} does not run there", rel.name(g)),
            None => "unknown".to_string(),
        }
    }

    /// Whether `u` can go on `m` now, given who is there; Ok holds the units it would push off.
    fn fit(&self, u: u32, m: u32) -> Result<Vec<u32>, Block> {
        let rel = self.rel;
        let ui = u as usize;
        let mi = m as usize;
        let c = &rel.conflicts;
        if c.involved(u) {
            let here = self.on[mi].len() + self.globals_on[mi].len();
            let found = if c.peer_bound(u) < here {
                c.peers(u).find(|&v| match rel.kind[v as usize] {
                    Kind::Global => self.runs_global(v, m),
                    Kind::Schedulable => self.at[v as usize] == Some(m),
                    Kind::Inert => false,
                })
            } else {
                self.on[mi]
                    .iter()
                    .chain(&self.globals_on[mi])
                    .copied()
                    .find(|&v| c.conflict(u, v))
            };
            if let Some(v) = found {
                return Err(Block::Conflict(v));
            }
        }
        if let Some(&j) = rel.replaced_by[ui]
            .iter()
            .find(|&&j| self.at[j as usize] == Some(m))
        {
            return Err(Block::ReplacedBy(j));
        }
        let mut evict: Vec<u32> = rel.replaces[ui]
            .iter()
            .copied()
            .filter(|&r| self.at[r as usize] == Some(m))
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
            for &f in &rel.followers[evict[i] as usize] {
                if self.at[f as usize] == Some(m) && !evict.contains(&f) {
                    evict.push(f);
                }
            }
            i += 1;
        }
        if let Some(&t) = rel.targets[ui].iter().find(|t| evict.contains(t)) {
            return Err(Block::WouldEvictTarget(t));
        }
        Ok(evict)
    }

    /// The reason for a unit no machine of its pool takes.
    fn explain(&self, u: u32, pool: &Pool, scope: &str) -> String {
        let rel = self.rel;
        let machines: Vec<u32> = match pool {
            Pool::All => (0..self.machines.len() as u32).collect(),
            Pool::Listed(list, _) => list.to_vec(),
        };
        let mut conflicts = BTreeSet::new();
        let mut replacers = BTreeSet::new();
        let mut targets = BTreeSet::new();
        let mut budget = false;
        for m in machines {
            match self.fit(u, m) {
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
        format!("{} {scope}", parts.join("; "))
    }

    fn into_plan(self, placements: &BTreeMap<String, String>) -> Plan {
        let rel = self.rel;
        let mut plan = Plan::default();
        // Units and placements are both sorted by name: walk them side by side.
        let mut placed = placements.iter().peekable();
        for (u, at) in self.at.iter().enumerate() {
            let name = rel.name(u as u32);
            while let Some((gone, m)) = placed.next_if(|(n, _)| n.as_str() < name) {
                plan.remove.push(Placement::new(gone, m));
            }
            let before = placed
                .next_if(|(n, _)| n.as_str() == name)
                .map(|(_, m)| m.as_str());
            let after = at.map(|m| self.machines[m as usize].id.as_str());
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
        for (u, reason) in self.reasons.into_iter().enumerate() {
            if let (Some(reason), None) = (reason, self.at[u]) {
                plan.unplaceable
                    .insert(rel.name(u as u32).to_string(), reason);
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

//! Who constrains whom: the unit relations a pass needs, computed once per snapshot.
//!
//! Units are numbered in name order, so every list here is sorted by name and every loop over
//! units is deterministic.

use super::ix::{GlobIx, Ix, IxVec, UnitIx};
use super::ClusterUnit;
use registry::TargetState;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use unit::glob::{is_literal, literal_prefix, path_match};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Non-global, not a template, desired state not inactive: the engine places it.
    Schedulable,
    /// Global, not a template, desired state not inactive: runs wherever it matches.
    Global,
    /// Runs nowhere.
    Inert,
}

/// Per unit, a list of units.
pub(super) type UnitLists = IxVec<UnitIx, Vec<UnitIx>>;

pub(super) struct Relations<'a> {
    pub units: IxVec<UnitIx, &'a ClusterUnit>,
    pub kind: IxVec<UnitIx, Kind>,
    /// Which live units may not share a machine (either side's Conflicts matches the other).
    pub conflicts: ConflictIndex,
    /// Schedulable units this one pushes off its machine (Replaces, circular ones dropped).
    pub replaces: UnitLists,
    /// Schedulable units that push this one off their machine. Sorted.
    pub replaced_by: UnitLists,
    /// MachineOf peers that are schedulable units, and the anchor of the unit's dependency
    /// group when the unit has no MachineOf target of its own (see `dependency_groups`).
    pub targets: UnitLists,
    /// MachineOf peers that are global units.
    pub global_targets: UnitLists,
    /// MachineOf peers that run nowhere (unknown, template, inactive): unit can't be placed.
    pub dead_targets: IxVec<UnitIx, Vec<&'a str>>,
    /// Schedulable units that have this one as a MachineOf target.
    pub followers: UnitLists,
    /// Why a unit in a MachineOf cycle can't be placed.
    pub cycle: IxVec<UnitIx, Option<String>>,
    /// Schedulable units, targets before their followers, otherwise by name.
    pub order: Vec<UnitIx>,
    /// Position in `order`.
    pub rank: IxVec<UnitIx, u32>,
    /// Per anchor of a dependency group: the group's other members, sorted. Empty for every
    /// other unit.
    pub group: UnitLists,
}

impl<'a> Relations<'a> {
    /// `placements` (unit -> machine) only choose which unit of a dependency group the others
    /// follow: one that is placed already, so a group that grows does not move.
    pub fn build(all: &'a [ClusterUnit], placements: &BTreeMap<String, String>) -> Relations<'a> {
        let mut sorted: Vec<&ClusterUnit> = all.iter().collect();
        // The registry hands units over sorted already; a stable sort keeps the first of a
        // repeated name first.
        if !sorted.is_sorted_by(|a, b| a.name <= b.name) {
            sorted.sort_by(|a, b| a.name.cmp(&b.name));
        }
        sorted.dedup_by(|later, first| later.name == first.name);
        let units: IxVec<UnitIx, &ClusterUnit> = IxVec::from_vec(sorted);
        let n = units.len();
        let kind: IxVec<UnitIx, Kind> = units
            .iter()
            .map(|u| {
                if u.desired == TargetState::Inactive || unit::is_template(&u.name) {
                    Kind::Inert
                } else if u.is_global() {
                    Kind::Global
                } else {
                    Kind::Schedulable
                }
            })
            .collect();
        let names: IxVec<UnitIx, &str> = units.iter().map(|u| u.name.as_str()).collect();
        let mut globs = GlobIndex {
            names: &names,
            ids: HashMap::new(),
            sets: IxVec::new(),
        };

        let mut own: IxVec<UnitIx, Vec<GlobIx>> = IxVec::filled(n, Vec::new());
        let mut replace_edges: UnitLists = IxVec::filled(n, Vec::new());
        for u in units.indices() {
            if kind[u] == Kind::Inert {
                continue;
            }
            own[u] = units[u]
                .requirements
                .conflicts
                .iter()
                .map(|p| globs.id(p))
                .collect();
            own[u].sort_unstable();
            own[u].dedup();
            // Replaces between a global unit and anything is meaningless here: the engine
            // cannot move a global unit, and fleet refuses Global with Replaces.
            if kind[u] == Kind::Schedulable {
                for pattern in &units[u].requirements.replaces {
                    let id = globs.id(pattern);
                    for &v in &globs.sets[id] {
                        if v != u && kind[v] == Kind::Schedulable {
                            replace_edges[u].push(v);
                        }
                    }
                }
                replace_edges[u].sort_unstable();
                replace_edges[u].dedup();
            }
        }
        let conflicts = ConflictIndex::new(globs.sets, own);

        // Units replacing each other (directly or round a longer loop) would push each other
        // around forever: fleet ignored such pairs, and so do we.
        let replace_scc = strongly_connected(&replace_edges);
        let mut replaces: UnitLists = IxVec::filled(n, Vec::new());
        let mut replaced_by: UnitLists = IxVec::filled(n, Vec::new());
        for (j, edges) in replace_edges.iter_enumerated() {
            for &r in edges {
                if replace_scc[j] != replace_scc[r] {
                    replaces[j].push(r);
                    replaced_by[r].push(j);
                }
            }
        }

        let mut targets: UnitLists = IxVec::filled(n, Vec::new());
        let mut global_targets: UnitLists = IxVec::filled(n, Vec::new());
        let mut dead_targets = IxVec::filled(n, Vec::new());
        let mut followers: UnitLists = IxVec::filled(n, Vec::new());
        for u in units.indices() {
            if kind[u] != Kind::Schedulable {
                continue;
            }
            for peer in &units[u].requirements.machine_of {
                match names
                    .as_slice()
                    .binary_search(&peer.as_str())
                    .map(UnitIx::new)
                {
                    Ok(t) if kind[t] == Kind::Schedulable => targets[u].push(t),
                    Ok(t) if kind[t] == Kind::Global => global_targets[u].push(t),
                    _ => dead_targets[u].push(peer.as_str()),
                }
            }
            for list in [&mut targets[u], &mut global_targets[u]] {
                list.sort_unstable();
                list.dedup();
            }
            for &t in &targets[u] {
                followers[t].push(u);
            }
        }

        let cycle = machine_of_cycles(&targets, &names);
        let group = dependency_groups(
            &units,
            &kind,
            &names,
            &mut targets,
            &mut followers,
            &dead_targets,
            placements,
        );
        let (order, rank) = placement_order(&kind, &targets, &followers);
        Relations {
            units,
            kind,
            conflicts,
            replaces,
            replaced_by,
            targets,
            global_targets,
            dead_targets,
            followers,
            cycle,
            order,
            rank,
            group,
        }
    }

    pub fn name(&self, u: UnitIx) -> &'a str {
        &self.units[u].name
    }

    /// How to name `t`, a unit `u` must share a machine with, in a reason about `u`.
    pub fn peer(&self, u: UnitIx, t: UnitIx) -> String {
        let name = self.name(t);
        if self.units[u]
            .requirements
            .machine_of
            .iter()
            .any(|p| p == name)
        {
            format!("MachineOf target {name}")
        } else {
            self.relation(u, t)
        }
    }

    /// How `v`, in the dependency group of `u`, is bound to it: `its Requires= unit db.service`,
    /// `app.service (which Requires= it)`, or, through other members, `x.service of its
    /// dependency group`.
    pub fn relation(&self, u: UnitIx, v: UnitIx) -> String {
        let (un, vn) = (self.name(u), self.name(v));
        let kind_of = |a: UnitIx, b: &str| {
            self.units[a]
                .requirements
                .dependencies
                .colocated()
                .find(|(n, _)| *n == b)
                .map(|(_, k)| k)
        };
        if let Some(k) = kind_of(u, vn) {
            format!("its {k}= unit {vn}")
        } else if let Some(k) = kind_of(v, un) {
            format!("{vn} (which {k}= it)")
        } else {
            format!("{vn} of its dependency group")
        }
    }

    /// Whether `v` is the anchor of `anchor`'s dependency group or one of its members.
    pub fn in_group(&self, anchor: UnitIx, v: UnitIx) -> bool {
        v == anchor || self.group[anchor].binary_search(&v).is_ok()
    }
}

/// Dependency groups: schedulable units joined by `Requires=`, `Requisite=`, `BindsTo=` or
/// `Wants=` of one another (and by MachineOf among them) go on one machine, because systemd
/// resolves those names on the local machine only (fleet's issues 997, 1003, 1079). Each
/// group has an anchor, a unit with no MachineOf target of its own; every other such unit of
/// the group gets the anchor as its MachineOf target, and the rest follow their own MachineOf
/// targets there. So the pass places the group with the rules it has for MachineOf, and
/// MachineOf's cycles stay MachineOf's. Dependencies on units that are not submitted, not
/// schedulable (inactive, global, templates) are left to systemd: they place nothing.
/// Returns, per anchor, the other members.
fn dependency_groups(
    units: &IxVec<UnitIx, &ClusterUnit>,
    kind: &IxVec<UnitIx, Kind>,
    names: &IxVec<UnitIx, &str>,
    targets: &mut UnitLists,
    followers: &mut UnitLists,
    dead_targets: &IxVec<UnitIx, Vec<&str>>,
    placements: &BTreeMap<String, String>,
) -> UnitLists {
    let n = units.len();
    let mut group: UnitLists = IxVec::filled(n, Vec::new());
    let mut sets = DisjointSets::new(n);
    let mut any = false;
    let mut has_dependency: Vec<bool> = vec![false; n];
    for u in units.indices() {
        if kind[u] != Kind::Schedulable {
            continue;
        }
        for (dep, _) in units[u].requirements.dependencies.colocated() {
            if let Ok(t) = names.as_slice().binary_search(&dep).map(UnitIx::new) {
                if t != u && kind[t] == Kind::Schedulable {
                    sets.union(u.index(), t.index());
                    has_dependency[u.index()] = true;
                    any = true;
                }
            }
        }
    }
    if !any {
        return group;
    }
    for u in units.indices() {
        for &t in &targets[u] {
            sets.union(u.index(), t.index());
        }
    }
    let mut grouped: Vec<bool> = vec![false; n];
    for (i, &has) in has_dependency.iter().enumerate() {
        if has {
            grouped[sets.find(i)] = true;
        }
    }
    // Members per set, in name order (indices are name order).
    let mut members: BTreeMap<usize, Vec<UnitIx>> = BTreeMap::new();
    for u in units.indices() {
        if kind[u] == Kind::Schedulable {
            let root = sets.find(u.index());
            if grouped[root] {
                members.entry(root).or_default().push(u);
            }
        }
    }
    for list in members.values() {
        let free: Vec<UnitIx> = list
            .iter()
            .copied()
            .filter(|&u| targets[u].is_empty())
            .collect();
        // A unit with a MachineOf target that runs nowhere can't be placed: anchoring the group
        // on it would hold every member back.
        let live = |u: &&UnitIx| dead_targets[**u].is_empty();
        let Some(&anchor) = free
            .iter()
            .filter(live)
            .find(|&&u| placements.contains_key(names[u]))
            .or(free.iter().find(live))
            .or(free.first())
        else {
            // Every member follows a MachineOf target: a MachineOf cycle, reported as such.
            continue;
        };
        group[anchor] = list.iter().copied().filter(|&u| u != anchor).collect();
        for &u in free.iter().filter(|&&u| u != anchor) {
            targets[u].push(anchor);
            followers[anchor].push(u);
        }
    }
    group
}

/// Union-find with path halving. Hand-written: a dozen lines, used once per snapshot, where a
/// crate would bring its own index types to convert from.
struct DisjointSets {
    parent: Vec<usize>,
}

impl DisjointSets {
    fn new(n: usize) -> DisjointSets {
        DisjointSets {
            parent: (0..n).collect(),
        }
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            // The smaller index as root keeps the choice independent of the order of unions.
            self.parent[ra.max(rb)] = ra.min(rb);
        }
    }
}

/// Expands globs against the sorted unit names. A glob's literal prefix narrows the names to
/// test to one range, and each distinct glob is expanded once (instances of one template
/// usually share their `Conflicts=` line).
struct GlobIndex<'n> {
    names: &'n IxVec<UnitIx, &'n str>,
    ids: HashMap<String, GlobIx>,
    /// Per glob: the units whose names it matches, sorted.
    sets: IxVec<GlobIx, Vec<UnitIx>>,
}

impl GlobIndex<'_> {
    fn id(&mut self, pattern: &str) -> GlobIx {
        if let Some(&id) = self.ids.get(pattern) {
            return id;
        }
        let names = self.names.as_slice();
        let found = if is_literal(pattern) {
            names
                .binary_search(&pattern)
                .map(|i| vec![UnitIx::new(i)])
                .unwrap_or_default()
        } else {
            let prefix = literal_prefix(pattern);
            let start = names.partition_point(|n| *n < prefix);
            names[start..]
                .iter()
                .take_while(|n| n.starts_with(prefix))
                .enumerate()
                .filter(|(_, n)| path_match(pattern, n))
                .map(|(i, _)| UnitIx::new(start + i))
                .collect()
        };
        let id = self.sets.next_index();
        self.sets.push(found);
        self.ids.insert(pattern.to_string(), id);
        id
    }
}

/// Conflicts by glob, without listing every conflicting pair: k instances sharing
/// `Conflicts=web@*` would make k² pairs, while here they share one matched set.
pub(super) struct ConflictIndex {
    /// Per glob: units whose names it matches, sorted.
    sets: IxVec<GlobIx, Vec<UnitIx>>,
    /// Per glob: units with that glob in their Conflicts.
    owners: IxVec<GlobIx, Vec<UnitIx>>,
    /// Per unit: its Conflicts globs.
    own: IxVec<UnitIx, Vec<GlobIx>>,
    /// Per unit: Conflicts globs that match its name.
    matched_by: IxVec<UnitIx, Vec<GlobIx>>,
    /// Per unit: how many entries `peers` yields.
    bound: IxVec<UnitIx, usize>,
}

impl ConflictIndex {
    fn new(sets: IxVec<GlobIx, Vec<UnitIx>>, own: IxVec<UnitIx, Vec<GlobIx>>) -> ConflictIndex {
        let n = own.len();
        let mut owners: IxVec<GlobIx, Vec<UnitIx>> = IxVec::filled(sets.len(), Vec::new());
        for (u, globs) in own.iter_enumerated() {
            for &g in globs {
                owners[g].push(u);
            }
        }
        let mut matched_by: IxVec<UnitIx, Vec<GlobIx>> = IxVec::filled(n, Vec::new());
        for (g, set) in sets.iter_enumerated() {
            if !owners[g].is_empty() {
                for &v in set {
                    matched_by[v].push(g);
                }
            }
        }
        let bound = own
            .indices()
            .map(|u| {
                own[u].iter().map(|&g| sets[g].len()).sum::<usize>()
                    + matched_by[u]
                        .iter()
                        .map(|&g| owners[g].len())
                        .sum::<usize>()
            })
            .collect();
        ConflictIndex {
            sets,
            owners,
            own,
            matched_by,
            bound,
        }
    }

    /// Whether `u` has anything to do with Conflicts (most units don't: then no check is needed).
    pub fn involved(&self, u: UnitIx) -> bool {
        self.bound[u] > 0
    }

    /// Whether `u` and `v` may not share a machine. A unit never conflicts with itself.
    pub fn conflict(&self, u: UnitIx, v: UnitIx) -> bool {
        let matches = |a: UnitIx, b: UnitIx| {
            self.own[a]
                .iter()
                .any(|&g| self.sets[g].binary_search(&b).is_ok())
        };
        u != v && (matches(u, v) || matches(v, u))
    }

    /// Every unit that conflicts with `u` (possibly `u` itself, repeated, or ones that don't
    /// run); `peer_bound` long.
    pub fn peers(&self, u: UnitIx) -> impl Iterator<Item = UnitIx> + '_ {
        let mine = self.own[u]
            .iter()
            .flat_map(|&g| self.sets[g].iter().copied());
        let theirs = self.matched_by[u]
            .iter()
            .flat_map(|&g| self.owners[g].iter().copied());
        mine.chain(theirs).filter(move |&v| v != u)
    }

    pub fn peer_bound(&self, u: UnitIx) -> usize {
        self.bound[u]
    }

    /// Units with the same signature conflict with exactly the same other units.
    pub fn signature(&self, u: UnitIx) -> (&[GlobIx], &[GlobIx]) {
        (&self.own[u], &self.matched_by[u])
    }
}

/// Tarjan's strongly connected components, iterative (chains of 50,000 units must not overflow
/// the stack). Returns a component number per node. Hand-written: the one graph crate that does
/// this (petgraph) would need the unit graph rebuilt in its types for ~40 lines of algorithm.
pub(super) fn strongly_connected(edges: &UnitLists) -> IxVec<UnitIx, u32> {
    const UNSEEN: u32 = u32::MAX;
    let n = edges.len();
    let mut index: IxVec<UnitIx, u32> = IxVec::filled(n, UNSEEN);
    let mut low: IxVec<UnitIx, u32> = IxVec::filled(n, 0);
    let mut on_stack: IxVec<UnitIx, bool> = IxVec::filled(n, false);
    let mut comp: IxVec<UnitIx, u32> = IxVec::filled(n, UNSEEN);
    let mut stack: Vec<UnitIx> = Vec::new();
    let mut calls: Vec<(UnitIx, usize)> = Vec::new();
    let (mut next_index, mut next_comp) = (0u32, 0u32);
    for root in edges.indices() {
        if index[root] != UNSEEN {
            continue;
        }
        index[root] = next_index;
        low[root] = next_index;
        next_index += 1;
        stack.push(root);
        on_stack[root] = true;
        calls.push((root, 0));
        while let Some(top) = calls.last_mut() {
            let v = top.0;
            if let Some(&w) = edges[v].get(top.1) {
                top.1 += 1;
                if index[w] == UNSEEN {
                    index[w] = next_index;
                    low[w] = next_index;
                    next_index += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    calls.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(p, _)) = calls.last() {
                low[p] = low[p].min(low[v]);
            }
            if low[v] == index[v] {
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    comp[w] = next_comp;
                    if w == v {
                        break;
                    }
                }
                next_comp += 1;
            }
        }
    }
    comp
}

/// For every unit on a MachineOf cycle: `MachineOf cycle: a.service -> b.service -> a.service`
/// (the shortest cycle through that unit, following MachineOf from it).
fn machine_of_cycles(
    targets: &UnitLists,
    names: &IxVec<UnitIx, &str>,
) -> IxVec<UnitIx, Option<String>> {
    let comp = strongly_connected(targets);
    let mut size = vec![0u32; targets.len()];
    for &c in comp.iter() {
        size[c as usize] += 1;
    }
    let mut cycle = IxVec::filled(targets.len(), None);
    for u in targets.indices() {
        let self_loop = targets[u].contains(&u);
        if !self_loop && size[comp[u] as usize] < 2 {
            continue;
        }
        // Breadth-first within the component back to u.
        let mut parent: HashMap<UnitIx, UnitIx> = HashMap::new();
        let mut queue = VecDeque::from([u]);
        let mut last = None;
        'search: while let Some(v) = queue.pop_front() {
            for &w in &targets[v] {
                if w == u {
                    last = Some(v);
                    break 'search;
                }
                if comp[w] == comp[u] && !parent.contains_key(&w) {
                    parent.insert(w, v);
                    queue.push_back(w);
                }
            }
        }
        let mut path = vec![u];
        let mut at = last;
        while let Some(v) = at {
            if v == u {
                break;
            }
            path.push(v);
            at = parent.get(&v).copied();
        }
        // path is u, then the cycle backwards; print it forwards.
        path[1..].reverse();
        path.push(u);
        let text: Vec<&str> = path.iter().map(|&v| names[v]).collect();
        cycle[u] = Some(format!("MachineOf cycle: {}", text.join(" -> ")));
    }
    cycle
}

/// Kahn's algorithm over MachineOf (target before follower), smallest name first among the
/// ready units; units that never become ready (on or behind a cycle) come last, by name.
fn placement_order(
    kind: &IxVec<UnitIx, Kind>,
    targets: &UnitLists,
    followers: &UnitLists,
) -> (Vec<UnitIx>, IxVec<UnitIx, u32>) {
    let n = kind.len();
    let mut waiting: IxVec<UnitIx, usize> = targets.iter().map(Vec::len).collect();
    let mut ready: BinaryHeap<Reverse<UnitIx>> = kind
        .indices()
        .filter(|&u| kind[u] == Kind::Schedulable && waiting[u] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(n);
    let mut rank = IxVec::filled(n, u32::MAX);
    while let Some(Reverse(u)) = ready.pop() {
        rank[u] = order.len() as u32;
        order.push(u);
        for &f in &followers[u] {
            waiting[f] -= 1;
            if waiting[f] == 0 {
                ready.push(Reverse(f));
            }
        }
    }
    for u in kind.indices() {
        if kind[u] == Kind::Schedulable && rank[u] == u32::MAX {
            rank[u] = order.len() as u32;
            order.push(u);
        }
    }
    (order, rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: Vec<Vec<u32>>) -> UnitLists {
        edges
            .into_iter()
            .map(|e| e.into_iter().map(|v| UnitIx::new(v as usize)).collect())
            .collect()
    }

    fn at<T: Clone>(v: &IxVec<UnitIx, T>, i: usize) -> T {
        v[UnitIx::new(i)].clone()
    }

    #[test]
    fn scc_finds_cycles_and_singletons() {
        // 0 -> 1 -> 2 -> 0, 3 -> 0, 4 alone
        let edges = graph(vec![vec![1], vec![2], vec![0], vec![0], vec![]]);
        let comp = strongly_connected(&edges);
        assert_eq!(at(&comp, 0), at(&comp, 1));
        assert_eq!(at(&comp, 1), at(&comp, 2));
        assert_ne!(at(&comp, 3), at(&comp, 0));
        assert_ne!(at(&comp, 4), at(&comp, 0));
        assert_ne!(at(&comp, 4), at(&comp, 3));
    }

    #[test]
    fn scc_long_chain_does_not_overflow() {
        let n = 200_000u32;
        let edges = graph(
            (0..n)
                .map(|i| if i + 1 < n { vec![i + 1] } else { vec![0] })
                .collect(),
        );
        let comp = strongly_connected(&edges);
        assert!(comp.iter().all(|&c| c == at(&comp, 0)));
    }

    #[test]
    fn cycle_text_follows_machine_of() {
        let names = IxVec::from_vec(vec!["a", "b", "c", "d"]);
        // a MachineOf b, b MachineOf c, c MachineOf a; d MachineOf d
        let targets = graph(vec![vec![1], vec![2], vec![0], vec![3]]);
        let cycles = machine_of_cycles(&targets, &names);
        assert_eq!(
            at(&cycles, 0).as_deref(),
            Some("MachineOf cycle: a -> b -> c -> a")
        );
        assert_eq!(
            at(&cycles, 1).as_deref(),
            Some("MachineOf cycle: b -> c -> a -> b")
        );
        assert_eq!(at(&cycles, 3).as_deref(), Some("MachineOf cycle: d -> d"));
    }
}

//! Who constrains whom: the unit relations a pass needs, computed once per snapshot.
//!
//! Units are numbered in name order, so every list here is sorted by name and every loop over
//! units is deterministic.

use super::ClusterUnit;
use registry::TargetState;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
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

pub(super) struct Relations<'a> {
    pub units: Vec<&'a ClusterUnit>,
    pub kind: Vec<Kind>,
    /// Which live units may not share a machine (either side's Conflicts matches the other).
    pub conflicts: ConflictIndex,
    /// Schedulable units this one pushes off its machine (Replaces, circular ones dropped).
    pub replaces: Vec<Vec<u32>>,
    /// Schedulable units that push this one off their machine. Sorted.
    pub replaced_by: Vec<Vec<u32>>,
    /// MachineOf peers that are schedulable units.
    pub targets: Vec<Vec<u32>>,
    /// MachineOf peers that are global units.
    pub global_targets: Vec<Vec<u32>>,
    /// MachineOf peers that run nowhere (unknown, template, inactive): unit can't be placed.
    pub dead_targets: Vec<Vec<&'a str>>,
    /// Schedulable units that have this one as a MachineOf target.
    pub followers: Vec<Vec<u32>>,
    /// Why a unit in a MachineOf cycle can't be placed.
    pub cycle: Vec<Option<String>>,
    /// Schedulable units, targets before their followers, otherwise by name.
    pub order: Vec<u32>,
    /// Position in `order`.
    pub rank: Vec<u32>,
}

impl<'a> Relations<'a> {
    pub fn build(all: &'a [ClusterUnit]) -> Relations<'a> {
        let mut units: Vec<&ClusterUnit> = all.iter().collect();
        // The registry hands units over sorted already; a stable sort keeps the first of a
        // repeated name first.
        if !units.is_sorted_by(|a, b| a.name <= b.name) {
            units.sort_by(|a, b| a.name.cmp(&b.name));
        }
        units.dedup_by(|later, first| later.name == first.name);
        let n = units.len();
        let kind: Vec<Kind> = units
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
        let names: Vec<&str> = units.iter().map(|u| u.name.as_str()).collect();
        let mut globs = GlobIndex {
            names: &names,
            ids: HashMap::new(),
            sets: Vec::new(),
        };

        let mut own = vec![Vec::new(); n];
        let mut replace_edges = vec![Vec::new(); n];
        for u in 0..n {
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
                    for &v in &globs.sets[id as usize] {
                        if v as usize != u && kind[v as usize] == Kind::Schedulable {
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
        let mut replaces = vec![Vec::new(); n];
        let mut replaced_by = vec![Vec::new(); n];
        for (j, edges) in replace_edges.iter().enumerate() {
            for &r in edges {
                if replace_scc[j] != replace_scc[r as usize] {
                    replaces[j].push(r);
                    replaced_by[r as usize].push(j as u32);
                }
            }
        }

        let mut targets = vec![Vec::new(); n];
        let mut global_targets = vec![Vec::new(); n];
        let mut dead_targets = vec![Vec::new(); n];
        let mut followers = vec![Vec::new(); n];
        for u in 0..n {
            if kind[u] != Kind::Schedulable {
                continue;
            }
            for peer in &units[u].requirements.machine_of {
                match names.binary_search(&peer.as_str()) {
                    Ok(t) if kind[t] == Kind::Schedulable => targets[u].push(t as u32),
                    Ok(t) if kind[t] == Kind::Global => global_targets[u].push(t as u32),
                    _ => dead_targets[u].push(peer.as_str()),
                }
            }
            for list in [&mut targets[u], &mut global_targets[u]] {
                list.sort_unstable();
                list.dedup();
            }
            for &t in &targets[u] {
                followers[t as usize].push(u as u32);
            }
        }

        let cycle = machine_of_cycles(&targets, &names);
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
        }
    }

    pub fn name(&self, u: u32) -> &'a str {
        &self.units[u as usize].name
    }
}

/// Expands globs against the sorted unit names. A glob's literal prefix narrows the names to
/// test to one range, and each distinct glob is expanded once (instances of one template
/// usually share their `Conflicts=` line).
struct GlobIndex<'n> {
    names: &'n [&'n str],
    ids: HashMap<String, u32>,
    /// Per glob id: the units whose names it matches, sorted.
    sets: Vec<Vec<u32>>,
}

impl GlobIndex<'_> {
    fn id(&mut self, pattern: &str) -> u32 {
        if let Some(&id) = self.ids.get(pattern) {
            return id;
        }
        let found = if is_literal(pattern) {
            self.names
                .binary_search(&pattern)
                .map(|i| vec![i as u32])
                .unwrap_or_default()
        } else {
            let prefix = literal_prefix(pattern);
            let start = self.names.partition_point(|n| *n < prefix);
            self.names[start..]
                .iter()
                .take_while(|n| n.starts_with(prefix))
                .enumerate()
                .filter(|(_, n)| path_match(pattern, n))
                .map(|(i, _)| (start + i) as u32)
                .collect()
        };
        let id = self.sets.len() as u32;
        self.sets.push(found);
        self.ids.insert(pattern.to_string(), id);
        id
    }
}

/// Conflicts by glob, without listing every conflicting pair: k instances sharing
/// `Conflicts=web@*` would make k² pairs, while here they share one matched set.
pub(super) struct ConflictIndex {
    /// Per glob id: units whose names it matches, sorted.
    sets: Vec<Vec<u32>>,
    /// Per glob id: units with that glob in their Conflicts.
    owners: Vec<Vec<u32>>,
    /// Per unit: its Conflicts glob ids.
    own: Vec<Vec<u32>>,
    /// Per unit: Conflicts glob ids that match its name.
    matched_by: Vec<Vec<u32>>,
    /// Per unit: how many entries `peers` yields.
    bound: Vec<usize>,
}

impl ConflictIndex {
    fn new(sets: Vec<Vec<u32>>, own: Vec<Vec<u32>>) -> ConflictIndex {
        let n = own.len();
        let mut owners = vec![Vec::new(); sets.len()];
        for (u, globs) in own.iter().enumerate() {
            for &g in globs {
                owners[g as usize].push(u as u32);
            }
        }
        let mut matched_by = vec![Vec::new(); n];
        for (g, set) in sets.iter().enumerate() {
            if !owners[g].is_empty() {
                for &v in set {
                    matched_by[v as usize].push(g as u32);
                }
            }
        }
        let bound = (0..n)
            .map(|u| {
                own[u]
                    .iter()
                    .map(|&g| sets[g as usize].len())
                    .sum::<usize>()
                    + matched_by[u]
                        .iter()
                        .map(|&g| owners[g as usize].len())
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
    pub fn involved(&self, u: u32) -> bool {
        self.bound[u as usize] > 0
    }

    /// Whether `u` and `v` may not share a machine. A unit never conflicts with itself.
    pub fn conflict(&self, u: u32, v: u32) -> bool {
        let matches = |a: u32, b: u32| {
            self.own[a as usize]
                .iter()
                .any(|&g| self.sets[g as usize].binary_search(&b).is_ok())
        };
        u != v && (matches(u, v) || matches(v, u))
    }

    /// Every unit that conflicts with `u` (possibly `u` itself, repeated, or ones that don't
    /// run); `peer_bound` long.
    pub fn peers(&self, u: u32) -> impl Iterator<Item = u32> + '_ {
        let mine = self.own[u as usize]
            .iter()
            .flat_map(|&g| self.sets[g as usize].iter().copied());
        let theirs = self.matched_by[u as usize]
            .iter()
            .flat_map(|&g| self.owners[g as usize].iter().copied());
        mine.chain(theirs).filter(move |&v| v != u)
    }

    pub fn peer_bound(&self, u: u32) -> usize {
        self.bound[u as usize]
    }

    /// Units with the same signature conflict with exactly the same other units.
    pub fn signature(&self, u: u32) -> (&[u32], &[u32]) {
        (&self.own[u as usize], &self.matched_by[u as usize])
    }
}

/// Tarjan's strongly connected components, iterative (chains of 50,000 units must not overflow
/// the stack). Returns a component number per node. Hand-written: the one graph crate that does
/// this (petgraph) would need the unit graph rebuilt in its types for ~40 lines of algorithm.
pub(super) fn strongly_connected(edges: &[Vec<u32>]) -> Vec<u32> {
    const UNSEEN: u32 = u32::MAX;
    let n = edges.len();
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0u32; n];
    let mut on_stack = vec![false; n];
    let mut comp = vec![UNSEEN; n];
    let mut stack: Vec<u32> = Vec::new();
    let mut calls: Vec<(u32, usize)> = Vec::new();
    let (mut next_index, mut next_comp) = (0u32, 0u32);
    for root in 0..n {
        if index[root] != UNSEEN {
            continue;
        }
        index[root] = next_index;
        low[root] = next_index;
        next_index += 1;
        stack.push(root as u32);
        on_stack[root] = true;
        calls.push((root as u32, 0));
        while let Some(top) = calls.last_mut() {
            let v = top.0 as usize;
            if let Some(&w) = edges[v].get(top.1) {
                top.1 += 1;
                let w = w as usize;
                if index[w] == UNSEEN {
                    index[w] = next_index;
                    low[w] = next_index;
                    next_index += 1;
                    stack.push(w as u32);
                    on_stack[w] = true;
                    calls.push((w as u32, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            calls.pop();
            if let Some(parent) = calls.last() {
                let p = parent.0 as usize;
                low[p] = low[p].min(low[v]);
            }
            if low[v] == index[v] {
                while let Some(w) = stack.pop() {
                    on_stack[w as usize] = false;
                    comp[w as usize] = next_comp;
                    if w as usize == v {
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
fn machine_of_cycles(targets: &[Vec<u32>], names: &[&str]) -> Vec<Option<String>> {
    let comp = strongly_connected(targets);
    let mut size = vec![0u32; targets.len()];
    for &c in &comp {
        size[c as usize] += 1;
    }
    let mut cycle = vec![None; targets.len()];
    for u in 0..targets.len() {
        let self_loop = targets[u].contains(&(u as u32));
        if !self_loop && size[comp[u] as usize] < 2 {
            continue;
        }
        // Breadth-first within the component back to u.
        let mut parent: HashMap<u32, u32> = HashMap::new();
        let mut queue = VecDeque::from([u as u32]);
        let mut last = None;
        'search: while let Some(v) = queue.pop_front() {
            for &w in &targets[v as usize] {
                if w as usize == u {
                    last = Some(v);
                    break 'search;
                }
                if comp[w as usize] == comp[u] && !parent.contains_key(&w) {
                    parent.insert(w, v);
                    queue.push_back(w);
                }
            }
        }
        let mut path = vec![u as u32];
        let mut at = last;
        while let Some(v) = at {
            if v as usize == u {
                break;
            }
            path.push(v);
            at = parent.get(&v).copied();
        }
        // path is u, then the cycle backwards; print it forwards.
        path[1..].reverse();
        path.push(u as u32);
        let text: Vec<&str> = path.iter().map(|&v| names[v as usize]).collect();
        cycle[u] = Some(format!("MachineOf cycle: {}", text.join(" -> ")));
    }
    cycle
}

/// Kahn's algorithm over MachineOf (target before follower), smallest name first among the
/// ready units; units that never become ready (on or behind a cycle) come last, by name.
fn placement_order(
    kind: &[Kind],
    targets: &[Vec<u32>],
    followers: &[Vec<u32>],
) -> (Vec<u32>, Vec<u32>) {
    let n = kind.len();
    let mut waiting: Vec<usize> = targets.iter().map(Vec::len).collect();
    let mut ready: BinaryHeap<Reverse<u32>> = (0..n)
        .filter(|&u| kind[u] == Kind::Schedulable && waiting[u] == 0)
        .map(|u| Reverse(u as u32))
        .collect();
    let mut order = Vec::with_capacity(n);
    let mut rank = vec![u32::MAX; n];
    while let Some(Reverse(u)) = ready.pop() {
        rank[u as usize] = order.len() as u32;
        order.push(u);
        for &f in &followers[u as usize] {
            waiting[f as usize] -= 1;
            if waiting[f as usize] == 0 {
                ready.push(Reverse(f));
            }
        }
    }
    for u in 0..n {
        if kind[u] == Kind::Schedulable && rank[u] == u32::MAX {
            rank[u] = order.len() as u32;
            order.push(u as u32);
        }
    }
    (order, rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scc_finds_cycles_and_singletons() {
        // 0 -> 1 -> 2 -> 0, 3 -> 0, 4 alone
        let edges = vec![vec![1], vec![2], vec![0], vec![0], vec![]];
        let comp = strongly_connected(&edges);
        assert_eq!(comp[0], comp[1]);
        assert_eq!(comp[1], comp[2]);
        assert_ne!(comp[3], comp[0]);
        assert_ne!(comp[4], comp[0]);
        assert_ne!(comp[4], comp[3]);
    }

    #[test]
    fn scc_long_chain_does_not_overflow() {
        let n = 200_000u32;
        let edges: Vec<Vec<u32>> = (0..n)
            .map(|i| if i + 1 < n { vec![i + 1] } else { vec![0] })
            .collect();
        let comp = strongly_connected(&edges);
        assert!(comp.iter().all(|&c| c == comp[0]));
    }

    #[test]
    fn cycle_text_follows_machine_of() {
        let names = ["a", "b", "c", "d"];
        // a MachineOf b, b MachineOf c, c MachineOf a; d MachineOf d
        let targets = vec![vec![1], vec![2], vec![0], vec![3]];
        let cycles = machine_of_cycles(&targets, &names);
        assert_eq!(
            cycles[0].as_deref(),
            Some("MachineOf cycle: a -> b -> c -> a")
        );
        assert_eq!(
            cycles[1].as_deref(),
            Some("MachineOf cycle: b -> c -> a -> b")
        );
        assert_eq!(cycles[3].as_deref(), Some("MachineOf cycle: d -> d"));
    }
}

//! Counting active units from the published unit states (`states/<unit>/<machine>`), as an API
//! client would see them, kept current from a registry watch.
//!
//! ```
//! use fleet_bench::tracker::Tracker;
//! let mut t = Tracker::new(["g.service".to_string()].into(), 1);
//! t.apply("a.service", "m1", true);
//! t.apply("g.service", "m1", true);
//! assert_eq!(t.active(), 2);
//! assert!(t.done(1));
//! t.mark_dead(["m1".to_string()].into());
//! assert_eq!(t.active(), 0);
//! ```

use std::collections::{HashMap, HashSet};

/// Active units, counted on live machines only.
#[derive(Debug, Default)]
pub struct Tracker {
    globals: HashSet<String>,
    /// Units that must be active somewhere (all but the global ones).
    expected_placed: usize,
    /// (unit, machine) -> active.
    states: HashMap<(String, String), bool>,
    /// Non-global unit -> live machines where it is active.
    placed_active: HashMap<String, u32>,
    /// Active instances of global units on live machines.
    global_active: usize,
    dead: HashSet<String>,
}

impl Tracker {
    /// A tracker of `expected_placed` non-global units plus the global units named.
    pub fn new(globals: HashSet<String>, expected_placed: usize) -> Tracker {
        Tracker {
            globals,
            expected_placed,
            ..Tracker::default()
        }
    }

    fn count(&mut self, unit: &str, machine: &str, delta: i32) {
        if self.dead.contains(machine) {
            return;
        }
        if self.globals.contains(unit) {
            self.global_active = self.global_active.saturating_add_signed(delta as isize);
            return;
        }
        let n = self.placed_active.entry(unit.to_string()).or_insert(0);
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.placed_active.remove(unit);
        }
    }

    /// Records the state of `unit` on `machine` (`active` = systemd's `active`).
    pub fn apply(&mut self, unit: &str, machine: &str, active: bool) {
        let before = self
            .states
            .insert((unit.to_string(), machine.to_string()), active)
            .unwrap_or(false);
        match (before, active) {
            (false, true) => self.count(unit, machine, 1),
            (true, false) => self.count(unit, machine, -1),
            _ => {}
        }
    }

    /// The state of `unit` on `machine` is gone.
    pub fn remove(&mut self, unit: &str, machine: &str) {
        if self
            .states
            .remove(&(unit.to_string(), machine.to_string()))
            .unwrap_or(false)
        {
            self.count(unit, machine, -1);
        }
    }

    /// Forgets the states of global units (`global`) or of placed ones, before a full re-read
    /// of the prefix they are published under.
    pub fn clear(&mut self, global: bool) {
        let gone: Vec<(String, String)> = self
            .states
            .keys()
            .filter(|(u, _)| self.globals.contains(u) == global)
            .cloned()
            .collect();
        for (unit, machine) in gone {
            self.remove(&unit, &machine);
        }
    }

    /// From now on, states on these machines do not count.
    pub fn mark_dead(&mut self, dead: HashSet<String>) {
        self.dead.extend(dead);
        self.placed_active.clear();
        self.global_active = 0;
        let active: Vec<(String, String)> = self
            .states
            .iter()
            .filter(|(_, a)| **a)
            .map(|(k, _)| k.clone())
            .collect();
        for (unit, machine) in active {
            self.count(&unit, &machine, 1);
        }
    }

    /// Non-global units active somewhere plus global instances, on live machines.
    pub fn active(&self) -> usize {
        self.placed_active.len() + self.global_active
    }

    /// What [`Self::active`] is once everything runs on `live_machines` machines.
    pub fn expected(&self, live_machines: usize) -> usize {
        self.expected_placed + self.globals.len() * live_machines
    }

    pub fn done(&self, live_machines: usize) -> bool {
        self.placed_active.len() >= self.expected_placed
            && self.global_active >= self.globals.len() * live_machines
    }

    /// Non-global units active on `machine`.
    pub fn placed_on(&self, machine: &str) -> Vec<String> {
        self.states
            .iter()
            .filter(|((u, m), a)| **a && m == machine && !self.globals.contains(u))
            .map(|((u, _), _)| u.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_changes_and_ignore_repeats() {
        let mut t = Tracker::new(HashSet::from(["g".to_string()]), 2);
        t.apply("a", "m1", false);
        assert_eq!(t.active(), 0);
        t.apply("a", "m1", true);
        t.apply("a", "m1", true);
        assert_eq!(t.active(), 1);
        // The same unit active on two machines (a move in progress) counts once.
        t.apply("a", "m2", true);
        assert_eq!(t.active(), 1);
        t.apply("b", "m2", true);
        assert!(!t.done(2));
        t.apply("g", "m1", true);
        t.apply("g", "m2", true);
        assert!(t.done(2));
        assert_eq!(t.expected(2), 4);
        assert_eq!(t.active(), 4);
        t.remove("a", "m2");
        t.remove("b", "m2");
        assert_eq!(t.active(), 3);
        t.remove("zzz", "m9");
        assert_eq!(t.active(), 3);
    }

    #[test]
    fn dead_machines_do_not_count_until_units_move() {
        let mut t = Tracker::new(HashSet::new(), 2);
        t.apply("a", "m1", true);
        t.apply("b", "m2", true);
        assert_eq!(t.placed_on("m2"), vec!["b".to_string()]);
        t.mark_dead(HashSet::from(["m2".to_string()]));
        assert!(!t.done(1));
        // The dead machine's state expiring changes nothing.
        t.remove("b", "m2");
        assert_eq!(t.active(), 1);
        t.apply("b", "m1", true);
        assert!(t.done(1));
        t.clear(true);
        assert_eq!(t.active(), 2, "no global unit to forget");
        t.clear(false);
        assert_eq!(t.active(), 0);
    }
}

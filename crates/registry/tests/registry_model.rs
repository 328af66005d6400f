//! `Registry` over the embedded store: records as agents and the API read them.

use registry::{GlobalJob, Registry, Store, TargetState, Update};
use std::sync::Arc;

fn registry() -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> =
        Arc::new(registry::embedded::EmbeddedStore::open(dir.path()).expect("embedded store"));
    (dir, Registry::new(store, "/t/"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_records_carry_their_text_through_state_changes() {
    let (_dir, reg) = registry();
    let text = "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nGlobal=true\n";
    let file = unit::UnitFile::parse(text).unwrap();
    reg.create_unit("mon.service", &file, TargetState::Loaded)
        .await
        .unwrap();
    let read = |reg: Registry| async move {
        global_record(&reg, "mon.service")
            .await
            .expect("global record")
    };
    let g = read(reg.clone()).await;
    assert_eq!(g.job.desired, TargetState::Loaded);
    assert_eq!(unit::UnitFile::parse(&g.raw).unwrap().hash(), file.hash());
    assert!(reg
        .set_target_state("mon.service", TargetState::Launched)
        .await
        .unwrap());
    let g = read(reg.clone()).await;
    assert_eq!(g.job.desired, TargetState::Launched);
    assert_eq!(unit::UnitFile::parse(&g.raw).unwrap().hash(), file.hash());
    // The job listing still reads global records as jobs.
    let globals = reg.global_jobs(None).await.unwrap().items;
    assert_eq!(globals.len(), 1);
    assert_eq!(globals[0].desired, TargetState::Launched);
    // Replacing it with a non-global unit removes the global record.
    let plain = unit::UnitFile::parse("[Service]\nExecStart=/bin/true\n").unwrap();
    reg.create_unit("mon.service", &plain, TargetState::Launched)
        .await
        .unwrap();
    assert!(global_record(&reg, "mon.service").await.is_none());
    assert!(reg.global_jobs(None).await.unwrap().items.is_empty());
}

/// The global record of `name` as agents receive it (job and text), read by a follower.
async fn global_record(reg: &Registry, name: &str) -> Option<GlobalJob> {
    let Some(Update::Reset(records)) = reg.follow_globals().recv().await else {
        panic!("a follower starts with everything it follows");
    };
    records.into_iter().find(|(n, _)| n == name).map(|(_, g)| g)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_removed_with_their_last_unit() {
    let (_dir, reg) = registry();
    let file = unit::UnitFile::parse("[Service]\nExecStart=/bin/sleep 1\n").unwrap();
    reg.create_unit("a.service", &file, TargetState::Inactive)
        .await
        .unwrap();
    reg.create_unit("b.service", &file, TargetState::Inactive)
        .await
        .unwrap();
    let hash = file.hash();
    assert!(reg.destroy_unit("a.service").await.unwrap());
    assert!(
        reg.body(&hash, None).await.unwrap().is_some(),
        "b.service still uses the body"
    );
    assert!(reg.destroy_unit("b.service").await.unwrap());
    assert!(
        reg.body(&hash, None).await.unwrap().is_none(),
        "the last user took the body with it"
    );
    assert!(!reg.destroy_unit("b.service").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_instance_states_live_apart_from_placed_states() {
    let (_dir, reg) = registry();
    let plain = unit::UnitFile::parse("[Service]\nExecStart=/bin/true\n").unwrap();
    let global =
        unit::UnitFile::parse("[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nGlobal=true\n")
            .unwrap();
    reg.create_unit("web.service", &plain, TargetState::Launched)
        .await
        .unwrap();
    reg.create_unit("mon.service", &global, TargetState::Launched)
        .await
        .unwrap();
    let lease = reg
        .grant_machine_lease(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let state = |name: &str, machine: &str, global: bool| registry::UnitState {
        name: name.into(),
        machine_id: machine.into(),
        hash: plain.hash(),
        systemd: registry::SystemdState::default(),
        agent_state: TargetState::Launched,
        reason: None,
        global,
    };
    for m in ["m1", "m2"] {
        lease
            .publish_states(
                m,
                &[
                    state("mon.service", m, true),
                    state("web.service", m, false),
                ],
                &[],
            )
            .await
            .unwrap();
    }
    let names = |states: Vec<registry::UnitState>| -> Vec<(String, String)> {
        states.into_iter().map(|s| (s.name, s.machine_id)).collect()
    };
    let pair = |u: &str, m: &str| (u.to_string(), m.to_string());
    assert_eq!(
        names(reg.unit_states(None).await.unwrap().items),
        vec![
            pair("mon.service", "m1"),
            pair("mon.service", "m2"),
            pair("web.service", "m1"),
            pair("web.service", "m2"),
        ]
    );
    assert_eq!(
        names(reg.placed_states(None).await.unwrap().items),
        vec![pair("web.service", "m1"), pair("web.service", "m2")]
    );
    assert_eq!(
        names(reg.states_of_unit("mon.service").await.unwrap()),
        vec![pair("mon.service", "m1"), pair("mon.service", "m2")]
    );
    // A unit that stops being global (replaced under the same name): the agent removes the old
    // state, then publishes the new one; nothing stays behind under the other prefix.
    lease
        .publish_states("m1", &[], &["mon.service".to_string()])
        .await
        .unwrap();
    lease
        .publish_states("m1", &[state("mon.service", "m1", false)], &[])
        .await
        .unwrap();
    assert_eq!(
        names(reg.states_of_unit("mon.service").await.unwrap()),
        vec![pair("mon.service", "m1"), pair("mon.service", "m2")]
    );
    let on_m1: Vec<_> = reg
        .states_of_unit("mon.service")
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.machine_id == "m1")
        .collect();
    assert_eq!(on_m1.len(), 1);
    assert!(!on_m1[0].global, "the global instance's state is gone");
    lease
        .publish_states("m1", &[], &["mon.service".to_string()])
        .await
        .unwrap();
    lease
        .publish_states("m2", &[], &["mon.service".to_string()])
        .await
        .unwrap();
    assert!(reg.states_of_unit("mon.service").await.unwrap().is_empty());
    assert_eq!(reg.unit_states(None).await.unwrap().items.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_show_replaced_bodies() {
    let (_dir, reg) = registry();
    let old = unit::UnitFile::parse("[Service]\nExecStart=/bin/sleep 1\n").unwrap();
    let new = unit::UnitFile::parse("[Service]\nExecStart=/bin/sleep 2\n").unwrap();
    reg.create_unit("a.service", &old, TargetState::Launched)
        .await
        .unwrap();
    let first = reg.unit_views(None).await.unwrap();
    let first_revision = first.revision;
    assert_eq!(first.items[0].unit.file, old);
    // Parsed bodies are reused between listings by hash; a replaced body is a new hash.
    reg.create_unit("a.service", &new, TargetState::Launched)
        .await
        .unwrap();
    let second = reg.unit_views(None).await.unwrap().items;
    assert_eq!(second[0].unit.file, new);
    assert_eq!(reg.units(None).await.unwrap().items[0].file, new);
    // A listing pinned to the earlier revision still shows the earlier body.
    let pinned = reg.units(Some(first_revision)).await.unwrap().items;
    assert_eq!(pinned[0].file, old);
}

/// Creations arriving together are written together (group commit); each caller still gets
/// its own answer: a name is created once, an existing unit is left alone, and instances that
/// share one body (written once per transaction) all find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creations_each_get_their_own_answer() {
    let (_dir, reg) = registry();
    let shared = unit::UnitFile::parse("[Service]\nExecStart=/bin/sleep 1\n").unwrap();
    let existing = unit::UnitFile::parse("[Service]\nExecStart=/bin/true\n").unwrap();
    for i in 0..5 {
        reg.create_unit(&format!("old{i}.service"), &existing, TargetState::Loaded)
            .await
            .unwrap();
    }
    // (name, file): shared-body instances, units of their own, every name twice, and the
    // existing units again with another body.
    let mut wanted: Vec<(String, unit::UnitFile)> = Vec::new();
    for round in 0..2 {
        for i in 0..60 {
            wanted.push((format!("hello@{i}.service"), shared.clone()));
            let own = format!("[Service]\nExecStart=/bin/sleep {}\n", 100 + i + round);
            wanted.push((
                format!("own{i}.service"),
                unit::UnitFile::parse(&own).unwrap(),
            ));
        }
    }
    for i in 0..5 {
        wanted.push((format!("old{i}.service"), shared.clone()));
    }
    let runs = wanted.iter().map(|(name, file)| {
        let reg = reg.clone();
        let (name, file) = (name.clone(), file.clone());
        tokio::spawn(async move {
            let created = reg
                .create_unit_if_absent(&name, &file, TargetState::Launched)
                .await
                .unwrap();
            (name, file.hash(), created)
        })
    });
    let results: Vec<(String, unit::UnitHash, bool)> = futures::future::join_all(runs)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let mut created: std::collections::BTreeMap<String, Vec<unit::UnitHash>> = Default::default();
    for (name, hash, ok) in &results {
        if *ok {
            created.entry(name.clone()).or_default().push(*hash);
        }
    }
    assert_eq!(created.len(), 120, "each new name created: {created:?}");
    assert!(created.values().all(|h| h.len() == 1), "{created:?}");
    assert!(created.keys().all(|n| !n.starts_with("old")));
    for (name, hashes) in &created {
        let unit = reg.unit(name).await.unwrap().expect("created unit");
        assert_eq!(
            unit.job.hash, hashes[0],
            "{name} holds the body it was created with"
        );
        assert_eq!(unit.file.hash(), hashes[0], "{name}'s body is stored");
        assert_eq!(unit.job.desired, TargetState::Launched);
    }
    for i in 0..5 {
        let unit = reg.unit(&format!("old{i}.service")).await.unwrap().unwrap();
        assert_eq!(
            unit.job.hash,
            existing.hash(),
            "an existing unit is left alone"
        );
        assert_eq!(unit.job.desired, TargetState::Loaded);
    }
}

/// Target-state changes arriving together are written together too: each lands on its own
/// unit, a missing unit says so, and a global unit's record follows its job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_target_state_changes_each_land() {
    let (_dir, reg) = registry();
    let plain = unit::UnitFile::parse("[Service]\nExecStart=/bin/sleep 1\n").unwrap();
    let global =
        unit::UnitFile::parse("[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nGlobal=true\n")
            .unwrap();
    for i in 0..60 {
        reg.create_unit(&format!("u{i}.service"), &plain, TargetState::Inactive)
            .await
            .unwrap();
    }
    reg.create_unit("g.service", &global, TargetState::Inactive)
        .await
        .unwrap();
    let mut names: Vec<String> = (0..60).map(|i| format!("u{i}.service")).collect();
    names.push("g.service".into());
    names.push("missing.service".into());
    let runs = names.iter().map(|name| {
        let (reg, name) = (reg.clone(), name.clone());
        tokio::spawn(async move {
            let set = reg
                .set_target_state(&name, TargetState::Launched)
                .await
                .unwrap();
            (name, set)
        })
    });
    for r in futures::future::join_all(runs).await {
        let (name, set) = r.unwrap();
        assert_eq!(set, name != "missing.service", "{name}");
    }
    for name in names.iter().filter(|n| *n != "missing.service") {
        let unit = reg.unit(name).await.unwrap().unwrap();
        assert_eq!(unit.job.desired, TargetState::Launched, "{name}");
    }
    let globals = reg.global_jobs(None).await.unwrap().items;
    assert_eq!(globals.len(), 1);
    assert_eq!(globals[0].desired, TargetState::Launched);
}

/// A follower delivers everything it follows first, then each change, decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_deliver_everything_then_each_change() {
    use registry::Change;
    let (_dir, reg) = registry();
    let file = unit::UnitFile::parse("[Service]\nExecStart=/bin/true\n").unwrap();
    reg.create_unit("a.service", &file, TargetState::Loaded)
        .await
        .unwrap();
    let mut jobs = reg.follow_jobs();
    let first = jobs.recv().await.unwrap();
    let Update::Reset(all) = first else {
        panic!("first delivery {first:?}");
    };
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].0, "a.service");
    assert_eq!(all[0].1.desired, TargetState::Loaded);
    reg.set_target_state("a.service", TargetState::Launched)
        .await
        .unwrap();
    assert!(reg.destroy_unit("a.service").await.unwrap());
    let mut changes = Vec::new();
    while changes.len() < 2 {
        match jobs.recv().await.unwrap() {
            Update::Changes(c) => changes.extend(c),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(matches!(&changes[0], Change::Put(name, job)
        if name == "a.service" && job.desired == TargetState::Launched));
    assert_eq!(changes[1], Change::Delete("a.service".to_string()));
}

/// One engine leads at a time; a resigned leader's writes fail, and the others learn that the
/// leadership is vacant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_is_exclusive_and_fences_writes() {
    use registry::{Campaign, ScheduleChange};
    use std::time::Duration;
    let (_dir, reg) = registry();
    let ttl = Duration::from_secs(30);
    let Campaign::Won(a) = reg.campaign("a", ttl).await.unwrap() else {
        panic!("a alone wins");
    };
    let Campaign::Lost(leader) = reg.campaign("b", ttl).await.unwrap() else {
        panic!("b wins while a leads");
    };
    assert_eq!(leader.as_deref(), Some("a"));
    assert!(a.hold().await.unwrap());
    let reason = |r: &str| ScheduleChange::Reason {
        unit: "x.service".into(),
        reason: Some(r.into()),
    };
    assert!(a.apply_schedule(&[reason("first")]).await.unwrap());
    assert_eq!(
        reg.reasons(None).await.unwrap().items.get("x.service"),
        Some(&"first".to_string())
    );
    let mut watch = reg.follow_leader();
    a.resign().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), watch.vacated())
        .await
        .expect("the vacancy is seen")
        .expect("following goes on");
    assert!(!a.hold().await.unwrap(), "a no longer leads");
    assert!(!a.apply_schedule(&[reason("late")]).await.unwrap());
    let Campaign::Won(b) = reg.campaign("b", ttl).await.unwrap() else {
        panic!("b wins once a resigned");
    };
    assert_eq!(reg.leader().await.unwrap().as_deref(), Some("b"));
    assert!(b.apply_schedule(&[reason("second")]).await.unwrap());
    assert_eq!(
        reg.reasons(None).await.unwrap().items.get("x.service"),
        Some(&"second".to_string())
    );
}

/// A machine's record belongs to one live lease; a lease recorded earlier resumes only while
/// it lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_record_belongs_to_one_live_lease() {
    use registry::{Announcement, MachineState};
    use std::time::Duration;
    let (_dir, reg) = registry();
    let ttl = Duration::from_secs(30);
    let m = MachineState {
        id: "m1".into(),
        ..Default::default()
    };
    let first = reg.grant_machine_lease(ttl).await.unwrap();
    let second = reg.grant_machine_lease(ttl).await.unwrap();
    assert_eq!(first.announce(&m).await.unwrap(), Announcement::Written);
    assert_eq!(first.announce(&m).await.unwrap(), Announcement::Written);
    assert_eq!(
        second.announce(&m).await.unwrap(),
        Announcement::TakenBy(first.id())
    );
    let resumed = reg.resume_machine_lease(first.id(), ttl).await.unwrap();
    assert_eq!(resumed.map(|l| l.id()), Some(first.id()));
    first.revoke().await.unwrap();
    assert!(!first.alive().await.unwrap());
    assert!(reg.machines(None).await.unwrap().items.is_empty());
    assert!(reg
        .resume_machine_lease(first.id(), ttl)
        .await
        .unwrap()
        .is_none());
    assert_eq!(second.announce(&m).await.unwrap(), Announcement::Written);
    let machines = reg.machines(None).await.unwrap().items;
    assert_eq!(machines.len(), 1);
    assert_eq!(machines[0].id, "m1");
}

/// A store whose watches always fail: only followers that read instead of watching see changes.
struct NoWatches(Arc<dyn Store>);

#[async_trait::async_trait]
impl Store for NoWatches {
    async fn get(&self, key: &str) -> registry::store::Result<Option<registry::KeyValue>> {
        self.0.get(key).await
    }
    async fn range(
        &self,
        prefix: &str,
        start: Option<&str>,
        limit: usize,
        revision: Option<registry::Revision>,
    ) -> registry::store::Result<registry::RangePage> {
        self.0.range(prefix, start, limit, revision).await
    }
    async fn txn(
        &self,
        compares: Vec<registry::Compare>,
        success: Vec<registry::Op>,
        failure: Vec<registry::Op>,
    ) -> registry::store::Result<registry::TxnResult> {
        self.0.txn(compares, success, failure).await
    }
    async fn grant_lease(
        &self,
        ttl: std::time::Duration,
    ) -> registry::store::Result<registry::LeaseId> {
        self.0.grant_lease(ttl).await
    }
    async fn keep_alive(
        &self,
        lease: registry::LeaseId,
    ) -> registry::store::Result<std::time::Duration> {
        self.0.keep_alive(lease).await
    }
    async fn lease_ttl(
        &self,
        lease: registry::LeaseId,
    ) -> registry::store::Result<Option<std::time::Duration>> {
        self.0.lease_ttl(lease).await
    }
    async fn lease_times(
        &self,
        lease: registry::LeaseId,
    ) -> registry::store::Result<Option<registry::LeaseTimes>> {
        self.0.lease_times(lease).await
    }
    async fn revoke_lease(&self, lease: registry::LeaseId) -> registry::store::Result<()> {
        self.0.revoke_lease(lease).await
    }
    async fn watch(
        &self,
        _prefix: &str,
        _from: registry::Revision,
    ) -> registry::store::Result<registry::WatchStream> {
        Err(registry::StoreError::Unavailable(
            "watches are disabled in this test".into(),
        ))
    }
}

/// fleet's `disable_watches`: followers of a polling registry deliver what watching ones do (a
/// reset, then each change as a put or a delete) without a single watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_followers_deliver_changes_without_watches() {
    use registry::Change;
    let dir = tempfile::tempdir().expect("temp dir");
    let embedded: Arc<dyn Store> =
        Arc::new(registry::embedded::EmbeddedStore::open(dir.path()).expect("embedded store"));
    let reg = Registry::new(Arc::new(NoWatches(embedded)), "/t/")
        .polling(std::time::Duration::from_millis(20));
    let file = unit::UnitFile::parse("[Service]\nExecStart=/bin/true\n").unwrap();
    reg.create_unit("a.service", &file, TargetState::Loaded)
        .await
        .unwrap();
    let mut jobs = reg.follow_jobs();
    let first = jobs.recv().await.unwrap();
    let Update::Reset(all) = first else {
        panic!("first delivery {first:?}");
    };
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].1.desired, TargetState::Loaded);

    // One change at a time: two changes between reads come as their sum.
    reg.set_target_state("a.service", TargetState::Launched)
        .await
        .unwrap();
    let changes = next_changes(&mut jobs).await;
    assert!(
        matches!(&changes[..], [Change::Put(name, job)]
            if name == "a.service" && job.desired == TargetState::Launched),
        "{changes:?}"
    );
    reg.create_unit("b.service", &file, TargetState::Launched)
        .await
        .unwrap();
    assert!(reg.destroy_unit("a.service").await.unwrap());
    let mut changes = next_changes(&mut jobs).await;
    while changes.len() < 2 {
        changes.extend(next_changes(&mut jobs).await);
    }
    assert!(
        changes.contains(&Change::Delete("a.service".to_string())),
        "{changes:?}"
    );
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, Change::Put(name, _) if name == "b.service")),
        "{changes:?}"
    );
    // Reads that find nothing new deliver nothing.
    assert_eq!(jobs.try_recv(), None);
}

async fn next_changes(
    jobs: &mut registry::Follower<String, registry::Job>,
) -> Vec<registry::Change<String, registry::Job>> {
    // A deadline, not a measure: without polling no change would ever come.
    let next = tokio::time::timeout(std::time::Duration::from_secs(30), jobs.recv()).await;
    match next.expect("no change delivered within 30 s").unwrap() {
        Update::Changes(c) => c,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_marks_are_set_once_followed_and_taken_away() {
    let (_dir, reg) = registry();
    let mut follower = reg.follow_drains();
    assert_eq!(follower.recv().await, Some(Update::Reset(vec![])));
    let first = registry::DrainMark { since: 100 };
    assert!(reg.drain_machine("m1", &first).await.unwrap());
    // Draining again keeps the first mark: `since` says how long it has been drained.
    let again = registry::DrainMark { since: 200 };
    assert!(!reg.drain_machine("m1", &again).await.unwrap());
    assert_eq!(reg.drain_mark("m1").await.unwrap(), Some(first.clone()));
    assert_eq!(
        reg.drains().await.unwrap().into_iter().collect::<Vec<_>>(),
        vec![("m1".to_string(), first.clone())]
    );
    assert_eq!(
        follower.recv().await,
        Some(Update::Changes(vec![registry::Change::Put(
            "m1".to_string(),
            first
        )]))
    );
    assert!(reg.undrain_machine("m1").await.unwrap());
    assert!(!reg.undrain_machine("m1").await.unwrap());
    assert_eq!(reg.drain_mark("m1").await.unwrap(), None);
    assert_eq!(
        follower.recv().await,
        Some(Update::Changes(vec![registry::Change::Delete(
            "m1".to_string()
        )]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_holds_the_old_body_until_it_is_dropped() {
    let (_dir, reg) = registry();
    let v1 = unit::UnitFile::parse("[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nGlobal=true\n")
        .unwrap();
    let v2 = unit::UnitFile::parse("[Service]\nExecStart=/bin/false\n\n[X-Fleet]\nGlobal=true\n")
        .unwrap();
    let rollout = registry::GlobalRollout {
        old: v1.hash(),
        new: v2.hash(),
        allowed: Default::default(),
    };
    // No body stored under the old hash: nothing could be held back on it.
    assert_eq!(
        reg.put_rollout("g.service", &rollout).await.unwrap(),
        registry::RolloutWrite::OldBodyMissing
    );
    reg.create_unit("g.service", &v1, TargetState::Launched)
        .await
        .unwrap();
    assert_eq!(
        reg.put_rollout("g.service", &rollout).await.unwrap(),
        registry::RolloutWrite::Created
    );
    reg.create_unit("g.service", &v2, TargetState::Launched)
        .await
        .unwrap();
    // The unit moved on to v2, and v1 stays stored for the machines the rollout holds back.
    assert!(reg.body(&v1.hash(), None).await.unwrap().is_some());
    let content_written = global_record(&reg, "g.service").await.unwrap().revision;
    let mut allowed = rollout.clone();
    allowed.allowed.insert("m1".into());
    assert_eq!(
        reg.put_rollout("g.service", &allowed).await.unwrap(),
        registry::RolloutWrite::Updated
    );
    // A rollout step changes no machine's desired outcome: the record still reads as written
    // at its content's revision, so machines' summaries written since keep vouching for it.
    assert_eq!(
        global_record(&reg, "g.service").await.unwrap().revision,
        content_written
    );
    assert_eq!(
        reg.rollout("g.service").await.unwrap(),
        Some(allowed.clone())
    );
    assert_eq!(
        reg.rollouts()
            .await
            .unwrap()
            .into_keys()
            .collect::<Vec<_>>(),
        vec!["g.service".to_string()]
    );
    assert_eq!(allowed.hash_for(v2.hash(), "m1"), v2.hash());
    assert_eq!(allowed.hash_for(v2.hash(), "m2"), v1.hash());
    // A job naming other content than the rollout's new one is not held back.
    assert_eq!(allowed.hash_for(v1.hash(), "m2"), v1.hash());
    // The unit's global record, which agents follow, carries the rollout through every write.
    assert_eq!(
        global_record(&reg, "g.service").await.map(|g| g.rollout),
        Some(Some(allowed.clone()))
    );
    assert!(reg
        .set_target_state("g.service", TargetState::Loaded)
        .await
        .unwrap());
    reg.create_unit("g.service", &v2, TargetState::Launched)
        .await
        .unwrap();
    assert_eq!(
        global_record(&reg, "g.service").await.map(|g| g.rollout),
        Some(Some(allowed))
    );
    assert!(reg.delete_rollout("g.service").await.unwrap());
    assert_eq!(
        global_record(&reg, "g.service").await.map(|g| g.rollout),
        Some(None)
    );
    assert!(!reg.delete_rollout("g.service").await.unwrap());
    assert!(reg.body(&v1.hash(), None).await.unwrap().is_none());
    assert!(reg.body(&v2.hash(), None).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroying_a_unit_drops_its_rollout_and_the_bodies_it_held() {
    let (_dir, reg) = registry();
    let global = |exec: &str| {
        unit::UnitFile::parse(&format!(
            "[Service]\nExecStart={exec}\n\n[X-Fleet]\nGlobal=true\n"
        ))
        .unwrap()
    };
    let (v1, v2) = (global("/bin/true"), global("/bin/false"));
    let rollout = registry::GlobalRollout {
        old: v1.hash(),
        new: v2.hash(),
        allowed: ["m1".to_string()].into(),
    };
    // (whether the unit got the new content before it was destroyed)
    for replaced in [true, false] {
        reg.create_unit("g.service", &v1, TargetState::Launched)
            .await
            .unwrap();
        reg.put_rollout("g.service", &rollout).await.unwrap();
        if replaced {
            reg.create_unit("g.service", &v2, TargetState::Launched)
                .await
                .unwrap();
        }
        assert!(reg.destroy_unit("g.service").await.unwrap());
        assert_eq!(reg.rollout("g.service").await.unwrap(), None, "{replaced}");
        for hash in [v1.hash(), v2.hash()] {
            assert!(
                reg.body(&hash, None).await.unwrap().is_none(),
                "replaced {replaced}: body {hash} left behind"
            );
        }
    }
}

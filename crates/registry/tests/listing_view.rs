//! The followed copy behind the API's listings shows, at each revision it reaches, exactly what
//! reading the registry at that revision shows.

use registry::{
    desired_instance, Campaign, GlobalSummary, ListingView, Registry, ScheduleChange,
    ScheduleEntry, SystemdState, TargetState, UnitState,
};
use std::sync::Arc;
use std::time::Duration;

fn registry() -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        Arc::new(registry::embedded::EmbeddedStore::open(dir.path()).expect("embedded store"));
    (dir, Registry::new(store, "/_coreos.com/fleet/"))
}

fn file(text: &str) -> unit::UnitFile {
    unit::UnitFile::parse(&format!("[Service]\nExecStart=/bin/echo {text}\n")).expect("unit")
}

fn state(reg_hash: unit::UnitHash, name: &str, machine: &str, global: bool) -> UnitState {
    UnitState {
        name: name.into(),
        machine_id: machine.into(),
        hash: reg_hash,
        systemd: SystemdState {
            load: "loaded".into(),
            active: "active".into(),
            sub: "running".into(),
        },
        agent_state: TargetState::Launched,
        reason: None,
        global,
    }
}

/// Waits for the copy to hold every write made so far, then compares it with the registry
/// read at the copy's revision.
async fn same_as_registry(reg: &Registry, view: &ListingView) {
    let now = reg.current_revision().await.expect("revision");
    let at = view
        .reach(now, Duration::from_secs(10))
        .await
        .expect("the copy follows the registry");
    let units = view.units().expect("a copy once read");
    assert_eq!(units.revision, at);
    let read = reg.unit_views(Some(at)).await.expect("read");
    assert_eq!(*units.items, read.items, "units at revision {at}");
    let states = view.states().expect("a copy once read");
    assert_eq!(states.revision, at);
    let read = reg.unit_states(Some(at)).await.expect("read");
    let copied: Vec<UnitState> = states.items.iter().map(|s| UnitState::clone(s)).collect();
    assert_eq!(copied, read.items, "states at revision {at}");
}

#[tokio::test]
async fn the_copy_matches_the_registry_at_each_revision() {
    let (_dir, reg) = registry();
    for n in ["b.service", "a.service"] {
        reg.create_unit(n, &file(n), TargetState::Launched)
            .await
            .expect("create");
    }
    let view = reg.follow_listings().expect("a watching registry");
    same_as_registry(&reg, &view).await;

    // Units, placements, reasons and states of placed and global units, changed after the
    // copy was read.
    let g = unit::UnitFile::parse("[Service]\nExecStart=/bin/echo g\n\n[X-Fleet]\nGlobal=true\n")
        .expect("unit");
    reg.create_unit("g.service", &g, TargetState::Launched)
        .await
        .expect("create global");
    reg.create_unit("c.service", &file("c"), TargetState::Inactive)
        .await
        .expect("create");
    let Campaign::Won(leader) = reg
        .campaign("m1", Duration::from_secs(60))
        .await
        .expect("campaign")
    else {
        panic!("the test's engine did not win the leadership");
    };
    let hash = |name: &'static str| {
        let reg = reg.clone();
        async move {
            reg.unit(name)
                .await
                .expect("read")
                .expect("unit exists")
                .job
                .hash
        }
    };
    let a = hash("a.service").await;
    assert!(leader
        .apply_schedule(&[
            ScheduleChange::Place {
                unit: "a.service".into(),
                machine: "m1".into(),
                entry: ScheduleEntry {
                    hash: a,
                    desired: TargetState::Launched,
                    raw: None,
                },
            },
            ScheduleChange::Reason {
                unit: "b.service".into(),
                reason: Some("no machine".into()),
            },
        ])
        .await
        .expect("schedule"));
    let lease = reg
        .grant_machine_lease(Duration::from_secs(60))
        .await
        .expect("lease");
    let gh = hash("g.service").await;
    lease
        .publish_states(
            "m1",
            &[
                state(a, "a.service", "m1", false),
                state(gh, "g.service", "m1", true),
            ],
            &[],
        )
        .await
        .expect("publish");
    same_as_registry(&reg, &view).await;

    // Global instances by exception: m2 vouches for g (its row is computed from the job), m3
    // does not run it; m1's state of its own stays as published.
    let vouched = reg.current_revision().await.expect("revision");
    let summary = |absent: &[&str]| GlobalSummary {
        revision: vouched,
        absent: absent.iter().map(|s| s.to_string()).collect(),
    };
    lease
        .publish("m2", &[], &[], Some(&summary(&[])))
        .await
        .expect("summary");
    lease
        .publish("m3", &[], &[], Some(&summary(&["g.service"])))
        .await
        .expect("summary");
    same_as_registry(&reg, &view).await;
    let g_job = reg.unit("g.service").await.expect("read").expect("g").job;
    let rows = |view: &ListingView| -> Vec<UnitState> {
        let states = view.states().expect("copy");
        states
            .items
            .iter()
            .filter(|s| s.name == "g.service")
            .map(|s| UnitState::clone(s))
            .collect()
    };
    assert_eq!(
        rows(&view),
        vec![
            state(gh, "g.service", "m1", true),
            desired_instance(&g_job, "m2").expect("launched"),
        ]
    );
    // The job changed after m2's summary: m2 vouches for it no more until it writes again.
    reg.set_target_state("g.service", TargetState::Loaded)
        .await
        .expect("set");
    same_as_registry(&reg, &view).await;
    assert_eq!(rows(&view), vec![state(gh, "g.service", "m1", true)]);
    assert_eq!(
        reg.states_of_unit("g.service").await.expect("read"),
        vec![state(gh, "g.service", "m1", true)]
    );
    let vouched = reg.current_revision().await.expect("revision");
    lease
        .publish(
            "m2",
            &[],
            &[],
            Some(&GlobalSummary {
                revision: vouched,
                absent: Default::default(),
            }),
        )
        .await
        .expect("summary");
    same_as_registry(&reg, &view).await;
    let g_job = reg.unit("g.service").await.expect("read").expect("g").job;
    let loaded = desired_instance(&g_job, "m2").expect("loaded");
    assert_eq!(loaded.systemd.active, "inactive");
    assert_eq!(
        rows(&view),
        vec![state(gh, "g.service", "m1", true), loaded.clone()]
    );
    assert_eq!(
        reg.states_of_unit("g.service").await.expect("read"),
        vec![state(gh, "g.service", "m1", true), loaded]
    );
    // An empty summary (a machine without global units) leaves no key behind.
    lease
        .publish("m3", &[], &[], Some(&GlobalSummary::default()))
        .await
        .expect("summary");
    let keys: Vec<String> = reg
        .dump()
        .await
        .expect("dump")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(keys.iter().any(|k| k.ends_with("/gsummary/m2")), "{keys:?}");
    assert!(
        !keys.iter().any(|k| k.ends_with("/gsummary/m3")),
        "{keys:?}"
    );
    same_as_registry(&reg, &view).await;
    let units = view.units().expect("copy");
    let a_view = units
        .items
        .iter()
        .find(|u| u.unit.job.name == "a.service")
        .expect("a listed");
    assert_eq!(
        (a_view.machine.as_deref(), a_view.current),
        (Some("m1"), Some(TargetState::Launched))
    );

    reg.set_target_state("c.service", TargetState::Loaded)
        .await
        .expect("set");
    assert!(reg.destroy_unit("b.service").await.expect("destroy"));
    lease.revoke().await.expect("revoke");
    same_as_registry(&reg, &view).await;
    assert!(
        view.states().expect("copy").items.is_empty(),
        "states die with the lease"
    );
}

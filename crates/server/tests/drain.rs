//! `/fleet/v1/drain` over a real registry: draining names unknown machines, reports what
//! becomes of each unit from the scheduler's pass, and undrain takes the mark away.

mod common;

use axum::http::StatusCode;
use common::Env;
use registry::{Campaign, ScheduleChange, ScheduleEntry, TargetState};

#[tokio::test]
async fn drain_reports_units_and_undrain_returns_the_machine() {
    let env = Env::new(100).await;
    let _leases = [
        env.machine("m1", "10.0.0.1", &[]).await,
        env.machine("m2", "10.0.0.2", &[]).await,
    ];
    for n in ["a.service", "b.service"] {
        env.create(n, "launched").await;
    }
    let Campaign::Won(leader) = env
        .reg
        .campaign("m1", std::time::Duration::from_secs(60))
        .await
        .unwrap()
    else {
        panic!("the test's engine did not win the leadership");
    };
    let mut changes = Vec::new();
    for n in ["a.service", "b.service"] {
        let hash = env.reg.unit(n).await.unwrap().unwrap().job.hash;
        changes.push(ScheduleChange::Place {
            unit: n.into(),
            machine: "m1".into(),
            entry: ScheduleEntry {
                hash,
                desired: TargetState::Launched,
                raw: None,
            },
        });
    }
    assert!(leader.apply_schedule(&changes).await.unwrap());

    let r = env.get("/fleet/v1/drain").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), serde_json::json!({"machines": []}));

    let r = env.put("/fleet/v1/drain/m9", "").await;
    let (code, message) = r.error();
    assert_eq!(code, 404);
    assert!(
        message.contains("\"m9\" not found") && message.contains("list-machines"),
        "{message}"
    );

    let r = env.put("/fleet/v1/drain/m1", "").await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let m = r.json();
    assert_eq!(m["machineID"], "m1");
    assert_eq!(m["present"], true);
    assert_eq!(m["units"][0]["name"], "a.service");
    assert_eq!(m["units"][0]["status"], "moves");
    assert_eq!(m["units"][0]["machineID"], "m2");
    assert_eq!(m["units"][1]["name"], "b.service");
    assert_eq!(m["units"][1]["status"], "waits");
    // Draining again keeps the first mark.
    let since = m["since"].clone();
    let r = env.put("/fleet/v1/drain/m1", "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["since"], since);
    let listed = env.get("/fleet/v1/drain").await.json();
    assert_eq!(listed["machines"][0]["machineID"], "m1");
    // why names the drain.
    let why = env.get("/fleet/v1/why/a.service").await.json();
    assert!(
        why["units"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("machine m1 is drained"),
        "{why}"
    );

    let r = env.send("DELETE", "/fleet/v1/drain/m1", None, "").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = env.send("DELETE", "/fleet/v1/drain/m1", None, "").await;
    let (code, message) = r.error();
    assert_eq!(code, 404);
    assert!(message.contains("is not drained"), "{message}");
    assert_eq!(
        env.get("/fleet/v1/drain/m1").await.status,
        StatusCode::NOT_FOUND
    );
}

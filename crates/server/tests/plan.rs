//! `/fleet/v1/plan` and `/fleet/v1/why/<unit>` over a real registry: the answers name the rule
//! per machine, unit files are planned without being stored, and nothing is written.

mod common;

use axum::http::StatusCode;
use common::Env;
use serde_json::json;

fn unit_body(desired: &str, fleet: &[(&str, &str)]) -> String {
    let mut options =
        vec![json!({"section": "Service", "name": "ExecStart", "value": "/bin/true"})];
    for (k, v) in fleet {
        options.push(json!({"section": "X-Fleet", "name": k, "value": v}));
    }
    json!({"desiredState": desired, "options": options}).to_string()
}

async fn env() -> (Env, Vec<registry::MachineLease>) {
    let env = Env::new(100).await;
    let leases = vec![
        env.machine("m1", "10.0.0.1", &[("region", "east")]).await,
        env.machine("m2", "10.0.0.2", &[("region", "west")]).await,
    ];
    let r = env
        .put(
            "/fleet/v1/units/db.service",
            &unit_body("launched", &[("MachineMetadata", "region=east")]),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    (env, leases)
}

#[tokio::test]
async fn plan_and_why_explain_and_change_nothing() {
    let (env, _leases) = env().await;
    let before = env.reg.dump().await.unwrap();

    let why = env.get("/fleet/v1/why/db.service").await;
    assert_eq!(
        why.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&why.body)
    );
    let u = &why.json()["units"][0];
    assert_eq!(u["action"], "place");
    assert_eq!(u["machineID"], "m1");
    assert_eq!(u["machines"][1]["machineID"], "m2");
    assert_eq!(u["machines"][1]["fits"], false);
    assert_eq!(
        u["machines"][1]["verdict"],
        "MachineMetadata wants region=east, machine has region=west"
    );

    // A unit file not submitted, planned beside the stored one.
    let req = json!({
        "units": ["db.service"],
        "files": [{"name": "gpu.service", "options": [
            {"section": "X-Fleet", "name": "MachineMetadata", "value": "region=north"}]}],
    });
    let r = env
        .send(
            "POST",
            "/fleet/v1/plan",
            Some("application/json"),
            &req.to_string(),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let plan = r.json();
    assert_eq!(plan["units"][1]["name"], "gpu.service");
    assert_eq!(plan["units"][1]["action"], "none");
    assert_eq!(
        plan["units"][1]["reason"],
        "no machine matches MachineMetadata region=north"
    );

    let r = env.get("/fleet/v1/plan?unit=db.service").await;
    assert_eq!(r.json()["units"][0]["machineID"], "m1");

    assert_eq!(
        env.reg.dump().await.unwrap(),
        before,
        "a plan wrote to the registry"
    );
    assert!(env.reg.unit("gpu.service").await.unwrap().is_none());
}

#[tokio::test]
async fn errors_name_the_unit_and_the_way_out() {
    let (env, _leases) = env().await;
    let (code, message) = env.get("/fleet/v1/why/nope.service").await.error();
    assert_eq!(code, 404);
    assert!(
        message.contains("nope.service") && message.contains("submit"),
        "{message}"
    );
    let (code, message) = env.get("/fleet/v1/plan").await.error();
    assert_eq!(code, 400);
    assert!(message.contains("?unit=NAME"), "{message}");
    let (code, message) = env.get("/fleet/v1/plan?name=a.service").await.error();
    assert_eq!(code, 400);
    assert!(message.contains("\"name\""), "{message}");
    let (code, _) = env.get("/fleet/v1/why/no-suffix").await.error();
    assert_eq!(code, 400);
}

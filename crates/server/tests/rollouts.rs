//! `/fleet/v1/rollouts/<unit>` over a real registry: a rollout is for a global unit whose old
//! content is stored, is read back as written, and is dropped by DELETE.

mod common;

use axum::http::StatusCode;
use common::Env;
use registry::TargetState;

fn global(n: u32) -> unit::UnitFile {
    unit::UnitFile::parse(&format!(
        "[Service]\nExecStart=/bin/sleep {n}\n\n[X-Fleet]\nGlobal=true\n"
    ))
    .unwrap()
}

#[tokio::test]
async fn a_rollout_is_kept_for_a_global_unit_and_dropped_on_delete() {
    let env = Env::new(100).await;
    env.create("plain.service", "launched").await;
    env.reg
        .create_unit("g.service", &global(1), TargetState::Launched)
        .await
        .unwrap();
    let body = |old: &str, new: &str, allowed: &[&str]| {
        serde_json::json!({"oldHash": old, "newHash": new, "allowedMachines": allowed}).to_string()
    };
    let (v1, v2) = (global(1).hash().to_string(), global(2).hash().to_string());

    let r = env.get("/fleet/v1/rollouts/g.service").await;
    assert_eq!(r.error().0, 404);
    let r = env
        .put("/fleet/v1/rollouts/plain.service", &body(&v1, &v2, &[]))
        .await;
    let (code, message) = r.error();
    assert_eq!(code, 409);
    assert!(message.contains("not a global unit"), "{message}");
    let r = env
        .put("/fleet/v1/rollouts/g.service", &body("zz", &v2, &[]))
        .await;
    let (code, message) = r.error();
    assert_eq!(code, 400);
    assert!(message.contains("oldHash \"zz\""), "{message}");
    // Content 2 was never stored: nobody could be kept on it.
    let r = env
        .put("/fleet/v1/rollouts/g.service", &body(&v2, &v1, &[]))
        .await;
    let (code, message) = r.error();
    assert_eq!(code, 409);
    assert!(message.contains("is not stored"), "{message}");

    let r = env
        .put("/fleet/v1/rollouts/g.service", &body(&v1, &v2, &[]))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
    let r = env
        .put(
            "/fleet/v1/rollouts/g.service",
            &body(&v1, &v2, &["m2", "m1"]),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let read = env.get("/fleet/v1/rollouts/g.service").await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(
        read.json(),
        serde_json::json!({"name": "g.service", "oldHash": v1, "newHash": v2, "allowedMachines": ["m1", "m2"]})
    );
    let r = env
        .send("DELETE", "/fleet/v1/rollouts/g.service", None, "")
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = env
        .send("DELETE", "/fleet/v1/rollouts/g.service", None, "")
        .await;
    assert_eq!(r.error().0, 404);
}

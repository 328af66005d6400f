//! `/fleet/v1/leases` over a real registry: every registered machine with the times of the
//! lease its presence record is written under, and only GET.

mod common;

use axum::http::StatusCode;
use common::Env;

#[tokio::test]
async fn leases_name_each_machine_with_its_remaining_and_granted_ttl() {
    let env = Env::new(100).await;
    let r = env.get("/fleet/v1/leases").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), serde_json::json!({"machines": []}));

    let _leases = [
        env.machine("m1", "10.0.0.1", &[]).await,
        env.machine("m2", "10.0.0.2", &[]).await,
    ];
    for prefix in ["/fleet/v1", "/v1-alpha"] {
        let r = env.get(&format!("{prefix}/leases")).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let page: api::types::LeasePage = serde_json::from_slice(&r.body).expect("a lease page");
        let ids: Vec<&str> = page
            .machines
            .iter()
            .map(|m| m.machine_id.as_str())
            .collect();
        assert_eq!(ids, ["m1", "m2"]);
        for m in &page.machines {
            // The test's leases are granted for 60 s (common::Env::lease).
            assert_eq!(m.granted, Some(60.0), "{m:?}");
            assert!(m.remaining > 0.0 && m.remaining <= 60.0, "{m:?}");
        }
    }

    let r = env.send("DELETE", "/fleet/v1/leases", None, "").await;
    let (code, message) = r.error();
    assert_eq!(code, 405);
    assert!(message.contains("only GET"), "{message}");
    let r = env.get("/fleet/v1/leases/m1").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

//! Listings served from the followed copy of the registry: what a client reads right after
//! its own write, and pages read while the cluster changes.

mod common;

use common::Env;
use std::collections::BTreeSet;

fn names(v: &serde_json::Value, list: &str) -> Vec<String> {
    v[list]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|u| u["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Writes that land between two pages: a unit created before the names listed and one after,
/// a state published, and a unit of the listing destroyed.
async fn change(env: &Env, lease: &registry::MachineLease, tag: &str, gone: usize) {
    let extra = format!("a{tag}.service");
    env.create(&extra, "launched").await;
    env.publish("m1", lease, &extra, "active").await;
    env.send(
        "DELETE",
        &format!("/fleet/v1/units/b{gone:03}.service"),
        None,
        "",
    )
    .await;
    env.create(&format!("z{tag}.service"), "inactive").await;
}

/// Every page of `path` (names of the items of `list`), with the cluster changed between any
/// two pages, and the revision the tokens name.
async fn pages_while_changing(
    env: &Env,
    lease: &registry::MachineLease,
    path: &str,
    list: &str,
    gone: &mut usize,
) -> (Vec<String>, i64) {
    let mut items = Vec::new();
    let mut revision = None;
    let mut uri = path.to_string();
    loop {
        let r = env.get(&uri).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let page = r.json();
        items.extend(names(&page, list));
        *gone += 1;
        change(env, lease, &format!("{list}{gone:03}"), *gone).await;
        let Some(token) = page["nextPageToken"].as_str() else {
            return (items, revision.expect("a listing of several pages"));
        };
        let t = server::token::PageToken::decode(token, 7).expect("a token of ours");
        if let Some(before) = revision {
            assert_eq!(
                t.revision,
                Some(before),
                "a listing's tokens name one revision"
            );
        }
        revision = t.revision;
        uri = format!("{path}?nextPageToken={token}");
    }
}

#[tokio::test]
async fn a_listing_right_after_a_write_sees_it() {
    let env = Env::new(100).await;
    let lease = env.machine("m1", "10.0.0.1", &[]).await;
    // The first listing starts the copy; every later one must still see each write made
    // before it, though the copy learns of writes only through its watch.
    env.get("/fleet/v1/units").await;
    for i in 0..30 {
        let name = format!("u{i:02}.service");
        env.create(&name, "launched").await;
        let units = names(&env.get("/fleet/v1/units").await.json(), "units");
        assert!(units.contains(&name), "{name} missing from {units:?}");
        env.publish("m1", &lease, &name, "active").await;
        let states = names(&env.get("/fleet/v1/state").await.json(), "states");
        assert!(
            states.contains(&name),
            "state of {name} missing from {states:?}"
        );
        let r = env
            .put(
                &format!("/fleet/v1/units/{name}"),
                r#"{"desiredState":"inactive"}"#,
            )
            .await;
        assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
        let page = env.get("/fleet/v1/units").await.json();
        let unit = page["units"]
            .as_array()
            .and_then(|a| a.iter().find(|u| u["name"] == name.as_str()))
            .cloned()
            .unwrap_or_default();
        assert_eq!(unit["desiredState"], "inactive", "{unit}");
        let r = env
            .send("DELETE", &format!("/fleet/v1/units/{name}"), None, "")
            .await;
        assert_eq!(r.status, 204);
        let units = names(&env.get("/fleet/v1/units").await.json(), "units");
        assert!(
            !units.contains(&name),
            "{name} still listed after its delete"
        );
    }
}

#[tokio::test]
async fn pages_read_during_changes_show_one_revision_without_duplicates_or_gaps() {
    let env = Env::new(7).await;
    let lease = env.machine("m1", "10.0.0.1", &[]).await;
    for i in 0..120 {
        let name = format!("b{i:03}.service");
        env.create(&name, "launched").await;
        env.publish("m1", &lease, &name, "active").await;
    }
    let mut gone = 0;
    for round in 0..3 {
        let (units, revision) =
            pages_while_changing(&env, &lease, "/fleet/v1/units", "units", &mut gone).await;
        let want: Vec<String> = env
            .reg
            .unit_views(Some(revision))
            .await
            .expect("registry read at the listing's revision")
            .items
            .into_iter()
            .map(|v| v.unit.job.name)
            .collect();
        let unique: BTreeSet<&String> = units.iter().collect();
        assert_eq!(unique.len(), units.len(), "duplicates in {units:?}");
        assert_eq!(
            units, want,
            "round {round}: unit pages differ from revision {revision}"
        );

        let (states, revision) =
            pages_while_changing(&env, &lease, "/fleet/v1/state", "states", &mut gone).await;
        let want: Vec<String> = env
            .reg
            .unit_states(Some(revision))
            .await
            .expect("registry read at the listing's revision")
            .items
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            states, want,
            "round {round}: state pages differ from revision {revision}"
        );
    }
}

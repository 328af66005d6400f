//! A real API router over a real registry on the embedded store in a temp dir.

#![allow(dead_code)]

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use registry::embedded::{EmbeddedStore, HistoryLimits};
use registry::{
    Announcement, MachineLease, MachineState, Registry, SystemdState, TargetState, UnitState,
};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

pub struct Env {
    pub dir: tempfile::TempDir,
    pub reg: Registry,
    pub state: server::ApiState,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The error body's (code, message), checking fleet's shape and content type.
    pub fn error(&self) -> (u16, String) {
        assert_eq!(
            self.headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "error without JSON content type"
        );
        let v = self.json();
        let code = v["error"]["code"].as_u64().expect("error.code") as u16;
        assert_eq!(
            code,
            self.status.as_u16(),
            "error.code differs from the status"
        );
        let message = v["error"]["message"]
            .as_str()
            .expect("error.message")
            .to_string();
        (code, message)
    }
}

impl Env {
    pub async fn new(token_limit: u16) -> Env {
        Env::with_history(token_limit, HistoryLimits::default()).await
    }

    pub async fn with_history(token_limit: u16, history: HistoryLimits) -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open_with(dir.path(), history).expect("embedded store");
        let reg = Registry::new(Arc::new(store), "/_coreos.com/fleet/");
        let state = server::ApiState::new(reg.clone(), token_limit);
        state.set_available(true);
        Env { dir, reg, state }
    }

    pub async fn send(
        &self,
        method: &str,
        uri: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        self.send_req(req.body(Body::from(body.to_string())).unwrap())
            .await
    }

    pub async fn send_req(&self, req: Request<Body>) -> Resp {
        let resp = server::router(self.state.clone())
            .oneshot(req)
            .await
            .expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str) -> Resp {
        self.send("GET", uri, None, "").await
    }

    pub async fn put(&self, uri: &str, body: &str) -> Resp {
        self.send("PUT", uri, Some("application/json"), body).await
    }

    pub async fn patch(&self, body: &str) -> Resp {
        self.send(
            "PATCH",
            "/fleet/v1/machines",
            Some("application/json"),
            body,
        )
        .await
    }

    pub async fn create(&self, name: &str, desired: &str) {
        let body = serde_json::json!({
            "desiredState": desired,
            "options": [{"section": "Service", "name": "ExecStart", "value": format!("/bin/echo {name}")}],
        });
        let r = self
            .put(&format!("/fleet/v1/units/{name}"), &body.to_string())
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    }

    pub async fn lease(&self) -> MachineLease {
        self.reg
            .grant_machine_lease(Duration::from_secs(60))
            .await
            .expect("lease")
    }

    pub async fn machine(&self, id: &str, ip: &str, metadata: &[(&str, &str)]) -> MachineLease {
        let lease = self.lease().await;
        let m = MachineState {
            id: id.to_string(),
            public_ip: ip.to_string(),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..MachineState::default()
        };
        assert_eq!(
            lease.announce(&m).await.expect("register"),
            Announcement::Written
        );
        lease
    }

    pub async fn publish(&self, machine: &str, lease: &MachineLease, unit: &str, active: &str) {
        let u = self
            .reg
            .unit(unit)
            .await
            .expect("read")
            .expect("unit exists");
        let st = UnitState {
            name: unit.to_string(),
            machine_id: machine.to_string(),
            hash: u.job.hash,
            systemd: SystemdState {
                load: "loaded".into(),
                active: active.into(),
                sub: if active == "active" {
                    "running".into()
                } else {
                    "dead".into()
                },
            },
            agent_state: TargetState::Launched,
            reason: None,
            global: u.job.global,
        };
        lease
            .publish_states(machine, &[st], &[])
            .await
            .expect("publish");
    }
}

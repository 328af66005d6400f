//! fleetctl's handle on fleetd: [`api::Client`] plus `--debug` logging of every request.

use api::client::{ClientError, StateFilter};
use api::types::{DrainedMachine, Machine, PlanAnswer, PlanRequest, Unit, UnitState};
use api::{Client, TargetState};
use std::time::Instant;

/// The API client the commands use. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    client: Client,
    debug: bool,
}

impl Fleet {
    pub fn new(client: Client, debug: bool) -> Fleet {
        Fleet { client, debug }
    }

    pub fn endpoint(&self) -> &str {
        self.client.endpoint()
    }

    async fn logged<T>(
        &self,
        what: String,
        fut: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        if !self.debug {
            return fut.await;
        }
        let start = Instant::now();
        let result = fut.await;
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("error: {e}"),
        };
        eprintln!(
            "fleetctl: {what} on {}: {outcome} ({} ms)",
            self.client.endpoint(),
            start.elapsed().as_millis()
        );
        result
    }

    /// The cluster's events, handed to `on_event` until it returns `false` (see
    /// [`Client::events`]).
    pub async fn events(
        &self,
        filter: &api::types::EventFilter,
        follow: bool,
        on_event: impl FnMut(api::types::Event) -> bool,
    ) -> Result<(), ClientError> {
        self.logged(
            format!("GET /fleet/v1/events (follow={follow})"),
            self.client.events(filter, follow, on_event),
        )
        .await
    }

    pub async fn units(&self) -> Result<Vec<Unit>, ClientError> {
        self.logged("GET /fleet/v1/units".into(), self.client.units())
            .await
    }

    pub async fn unit(&self, name: &str) -> Result<Option<Unit>, ClientError> {
        self.logged(
            format!("GET /fleet/v1/units/{name}"),
            self.client.unit(name),
        )
        .await
    }

    pub async fn create_unit(&self, unit: &Unit) -> Result<(), ClientError> {
        self.logged(
            format!("PUT /fleet/v1/units/{} (create)", unit.name),
            self.client.create_or_update_unit(unit),
        )
        .await
    }

    pub async fn set_target_state(
        &self,
        name: &str,
        state: TargetState,
    ) -> Result<(), ClientError> {
        self.logged(
            format!("PUT /fleet/v1/units/{name} (desiredState {state})"),
            self.client.set_unit_target_state(name, state),
        )
        .await
    }

    pub async fn destroy_unit(&self, name: &str) -> Result<bool, ClientError> {
        self.logged(
            format!("DELETE /fleet/v1/units/{name}"),
            self.client.destroy_unit(name),
        )
        .await
    }

    pub async fn machines(&self) -> Result<Vec<Machine>, ClientError> {
        self.logged("GET /fleet/v1/machines".into(), self.client.machines())
            .await
    }

    /// States of every unit, or of one unit on every machine.
    pub async fn unit_states(&self, unit: Option<&str>) -> Result<Vec<UnitState>, ClientError> {
        let filter = StateFilter {
            unit_name: unit.map(str::to_string),
            machine_id: None,
        };
        let what = match unit {
            Some(u) => format!("GET /fleet/v1/state?unitName={u}"),
            None => "GET /fleet/v1/state".to_string(),
        };
        self.logged(what, self.client.unit_states(&filter)).await
    }

    /// Where units would go, changing nothing.
    pub async fn plan(&self, req: &PlanRequest) -> Result<PlanAnswer, ClientError> {
        let method = if req.files.is_empty() { "GET" } else { "POST" };
        self.logged(format!("{method} /fleet/v1/plan"), self.client.plan(req))
            .await
    }

    /// A global unit's rollout in progress (none against fleet's own server).
    pub async fn rollout(
        &self,
        unit: &str,
    ) -> Result<Option<api::types::GlobalRollout>, ClientError> {
        self.logged(
            format!("GET /fleet/v1/rollouts/{unit}"),
            self.client.rollout(unit),
        )
        .await
    }

    pub async fn put_rollout(
        &self,
        unit: &str,
        rollout: &api::types::GlobalRollout,
    ) -> Result<api::types::GlobalRollout, ClientError> {
        self.logged(
            format!(
                "PUT /fleet/v1/rollouts/{unit} ({} machine(s) allowed)",
                rollout.allowed_machines.len()
            ),
            self.client.put_rollout(unit, rollout),
        )
        .await
    }

    /// Drops a global unit's rollout; `false` if it had none (or the server has no rollouts).
    pub async fn delete_rollout(&self, unit: &str) -> Result<bool, ClientError> {
        self.logged(
            format!("DELETE /fleet/v1/rollouts/{unit}"),
            self.client.delete_rollout(unit),
        )
        .await
    }

    /// Every drained machine and what becomes of its units (none against fleet's own server).
    pub async fn drains(&self) -> Result<Vec<DrainedMachine>, ClientError> {
        self.logged("GET /fleet/v1/drain".into(), self.client.drains())
            .await
    }

    /// One drained machine, `None` if it is not drained.
    pub async fn drain_status(&self, machine: &str) -> Result<Option<DrainedMachine>, ClientError> {
        self.logged(
            format!("GET /fleet/v1/drain/{machine}"),
            self.client.drain_status(machine),
        )
        .await
    }

    pub async fn drain(&self, machine: &str) -> Result<DrainedMachine, ClientError> {
        self.logged(
            format!("PUT /fleet/v1/drain/{machine}"),
            self.client.drain(machine),
        )
        .await
    }

    pub async fn undrain(&self, machine: &str) -> Result<bool, ClientError> {
        self.logged(
            format!("DELETE /fleet/v1/drain/{machine}"),
            self.client.undrain(machine),
        )
        .await
    }

    /// The engine's reasoning for one unit.
    pub async fn why(&self, name: &str) -> Result<PlanAnswer, ClientError> {
        self.logged(format!("GET /fleet/v1/why/{name}"), self.client.why(name))
            .await
    }
}

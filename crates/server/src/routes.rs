//! Which resource a request is for: fleet's routing rules (`api/mux.go`, `api/path.go`) as one
//! pure function of method and decoded path.
//!
//! Both prefixes (`/fleet/v1` and the legacy `/v1-alpha`) are wired identically. An item path is
//! `<collection>/<one segment>` without a trailing slash; anything else under a resource is 404.

/// The API's prefixes, served identically.
pub const PREFIXES: [&str; 2] = ["/fleet/v1", "/v1-alpha"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Discovery,
    MachinesList,
    MachinesPatch,
    UnitsList,
    UnitGet(String),
    UnitPut(String),
    UnitDelete(String),
    StatesList,
    StateGet(String),
    /// `GET /plan?unit=..`: an extension beside fleet's resources; reads only.
    PlanGet,
    /// `POST /plan` with unit files: asks, and changes nothing.
    PlanPost,
    /// `GET /why/<unit>`: an extension beside fleet's resources; reads only.
    Why(String),
    /// `GET /output/<unit>`: the unit's recent output, kept by this machine's process
    /// supervisor; an extension, reads only.
    Output(String),
    /// `GET /drain`: the drained machines (an extension beside fleet's resources).
    DrainList,
    /// `GET /drain/<machineID>`.
    DrainGet(String),
    /// `PUT /drain/<machineID>`: drains the machine.
    DrainPut(String),
    /// `DELETE /drain/<machineID>`: returns it to service.
    DrainDelete(String),
    /// `GET /rollouts/<unit>`: a global unit's rollout (an extension beside fleet's
    /// resources).
    RolloutGet(String),
    /// `PUT /rollouts/<unit>`: creates or changes it.
    RolloutPut(String),
    /// `DELETE /rollouts/<unit>`: drops it (every machine runs the unit's content).
    RolloutDelete(String),
    /// `GET /leases`: each machine's presence lease; an extension, reads only.
    Leases,
    /// `GET /events`: the cluster's events as server-sent events; an extension, reads only.
    Events,
    /// `GET /ui/<asset>`: the dashboard's files (empty: its page); reads only.
    Ui(String),
    Metrics,
    /// A non-GET request for the discovery document (fleet answers 400, not 405).
    DiscoveryNotGet,
    MethodNotAllowed(&'static str),
    NotFound,
    /// A URL path whose percent-decoded bytes are not UTF-8 (400).
    InvalidPath,
}

impl Route {
    /// A label for metrics: the resource pattern, never the unit name.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Discovery | Route::DiscoveryNotGet => "discovery",
            Route::MachinesList | Route::MachinesPatch => "machines",
            Route::UnitsList => "units",
            Route::UnitGet(_) | Route::UnitPut(_) | Route::UnitDelete(_) => "units/{unitName}",
            Route::StatesList => "state",
            Route::StateGet(_) => "state/{unitName}",
            Route::PlanGet | Route::PlanPost => "plan",
            Route::Why(_) => "why/{unitName}",
            Route::Output(_) => "output/{unitName}",
            Route::DrainList => "drain",
            Route::DrainGet(_) | Route::DrainPut(_) | Route::DrainDelete(_) => "drain/{machineID}",
            Route::RolloutGet(_) | Route::RolloutPut(_) | Route::RolloutDelete(_) => {
                "rollouts/{unitName}"
            }
            Route::Events => "events",
            Route::Leases => "leases",
            Route::Ui(_) => "ui",
            Route::Metrics => "metrics",
            Route::MethodNotAllowed(_) => "method_not_allowed",
            Route::NotFound => "not_found",
            Route::InvalidPath => "invalid_path",
        }
    }
}

impl Route {
    /// Whether the request leaves the registry as it is: every GET, and `POST /plan`, which
    /// only asks. An authorization layer can let read-only clients through on this.
    pub fn changes_nothing(&self) -> bool {
        !matches!(
            self,
            Route::UnitPut(_)
                | Route::UnitDelete(_)
                | Route::MachinesPatch
                | Route::DrainPut(_)
                | Route::DrainDelete(_)
                | Route::RolloutPut(_)
                | Route::RolloutDelete(_)
        )
    }
}

const ONLY_GET: &str = "only GET supported against this resource";

/// Routes a request. `path` is the percent-decoded URL path.
pub fn route(method: &str, path: &str) -> Route {
    if path == "/metrics" {
        return if method == "GET" {
            Route::Metrics
        } else {
            Route::MethodNotAllowed(ONLY_GET)
        };
    }
    if path == "/" {
        return Route::MethodNotAllowed("");
    }
    if let Some(rest) = path.strip_prefix("/ui") {
        if rest.is_empty() || rest.starts_with('/') {
            return if method == "GET" {
                Route::Ui(rest.trim_start_matches('/').to_string())
            } else {
                Route::MethodNotAllowed(ONLY_GET)
            };
        }
    }
    let Some(rest) = PREFIXES.iter().find_map(|p| path.strip_prefix(p)) else {
        return Route::NotFound;
    };
    if rest.is_empty() {
        return Route::MethodNotAllowed("");
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return Route::NotFound;
    };
    let (resource, item) = match rest.split_once('/') {
        None => (rest, None),
        Some((resource, item)) => (resource, Some(item)),
    };
    // An item is exactly one non-empty segment: fleet's `path.Match(base+"/*")` without a
    // trailing slash.
    let item = match item {
        None => None,
        Some(i) if i.is_empty() || i.contains('/') => return Route::NotFound,
        Some(i) => Some(i.to_string()),
    };
    match (resource, item) {
        ("discovery", None) => match method {
            "GET" => Route::Discovery,
            _ => Route::DiscoveryNotGet,
        },
        ("machines", None) => match method {
            "GET" => Route::MachinesList,
            "PATCH" => Route::MachinesPatch,
            _ => Route::MethodNotAllowed("only GET and PATCH supported against this resource"),
        },
        ("units", None) => match method {
            "GET" => Route::UnitsList,
            _ => Route::MethodNotAllowed(ONLY_GET),
        },
        ("units", Some(name)) => match method {
            "GET" => Route::UnitGet(name),
            "PUT" => Route::UnitPut(name),
            "DELETE" => Route::UnitDelete(name),
            _ => {
                Route::MethodNotAllowed("only GET, PUT and DELETE supported against this resource")
            }
        },
        ("state", None) => match method {
            "GET" => Route::StatesList,
            _ => Route::MethodNotAllowed(ONLY_GET),
        },
        ("state", Some(name)) => match method {
            "GET" => Route::StateGet(name),
            _ => Route::MethodNotAllowed(ONLY_GET),
        },
        ("plan", None) => match method {
            "GET" => Route::PlanGet,
            "POST" => Route::PlanPost,
            _ => Route::MethodNotAllowed("only GET and POST supported against this resource"),
        },
        ("why", Some(name)) => match method {
            "GET" => Route::Why(name),
            _ => Route::MethodNotAllowed(ONLY_GET),
        },
        ("output", Some(name)) => match method {
            "GET" => Route::Output(name),
            _ => Route::MethodNotAllowed(ONLY_GET),
        },
        ("drain", None) => match method {
            "GET" => Route::DrainList,
            _ => Route::MethodNotAllowed(ONLY_GET),
        },
        ("drain", Some(id)) => match method {
            "GET" => Route::DrainGet(id),
            "PUT" => Route::DrainPut(id),
            "DELETE" => Route::DrainDelete(id),
            _ => {
                Route::MethodNotAllowed("only GET, PUT and DELETE supported against this resource")
            }
        },
        ("rollouts", Some(unit)) => match method {
            "GET" => Route::RolloutGet(unit),
            "PUT" => Route::RolloutPut(unit),
            "DELETE" => Route::RolloutDelete(unit),
            _ => {
                Route::MethodNotAllowed("only GET, PUT and DELETE supported against this resource")
            }
        },
        ("leases", None) => match method {
            "GET" => Route::Leases,
            _ => Route::MethodNotAllowed(ONLY_GET),
        },
        ("events", None) => match method {
            "GET" => Route::Events,
            _ => Route::MethodNotAllowed(ONLY_GET),
        },
        _ => Route::NotFound,
    }
}

/// The message of a 404 for the decoded `path`: what is missing, and for a unit name that spans
/// segments (`a/b.service`, `../x.service`), that a unit name is one segment.
pub fn not_found_message(path: &str) -> String {
    let shown = shorten(path);
    let item = PREFIXES
        .iter()
        .find_map(|p| path.strip_prefix(p))
        .and_then(|rest| {
            ["/units/", "/state/", "/why/"]
                .iter()
                .find_map(|r| rest.strip_prefix(r))
        });
    match item {
        Some("") => {
            format!("not found: {shown:?} names no unit (the unit name is empty)")
        }
        Some(name) => format!(
            "not found: {shown:?}: a unit name is one path segment, and {:?} contains \"/\"",
            shorten(name)
        ),
        None => format!(
            "not found: no resource at {shown:?} (the API is under {} and {})",
            PREFIXES[0], PREFIXES[1]
        ),
    }
}

/// At most 256 bytes of `s` (cut at a character boundary, marked with `...`), so that an error
/// about a huge URL stays one readable line.
fn shorten(s: &str) -> String {
    const MAX: usize = 256;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Percent-decodes a URL path as Go's `URL.Path` does; `None` when the bytes are not UTF-8.
pub fn decode_path(raw: &str) -> Option<String> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(method: &str, path: &str) -> Route {
        route(method, path)
    }

    #[test]
    fn table() {
        let u = |s: &str| s.to_string();
        for p in PREFIXES {
            let cases: Vec<(&str, String, Route)> = vec![
                ("GET", format!("{p}/discovery"), Route::Discovery),
                ("POST", format!("{p}/discovery"), Route::DiscoveryNotGet),
                ("GET", format!("{p}/discovery/"), Route::NotFound),
                ("GET", format!("{p}/machines"), Route::MachinesList),
                ("PATCH", format!("{p}/machines"), Route::MachinesPatch),
                (
                    "PUT",
                    format!("{p}/machines"),
                    Route::MethodNotAllowed("only GET and PATCH supported against this resource"),
                ),
                ("GET", format!("{p}/machines/abc"), Route::NotFound),
                ("GET", format!("{p}/leases"), Route::Leases),
                (
                    "DELETE",
                    format!("{p}/leases"),
                    Route::MethodNotAllowed(ONLY_GET),
                ),
                ("GET", format!("{p}/leases/m1"), Route::NotFound),
                ("GET", format!("{p}/units"), Route::UnitsList),
                (
                    "POST",
                    format!("{p}/units"),
                    Route::MethodNotAllowed(ONLY_GET),
                ),
                (
                    "GET",
                    format!("{p}/units/a.service"),
                    Route::UnitGet(u("a.service")),
                ),
                (
                    "PUT",
                    format!("{p}/units/a.service"),
                    Route::UnitPut(u("a.service")),
                ),
                (
                    "DELETE",
                    format!("{p}/units/a.service"),
                    Route::UnitDelete(u("a.service")),
                ),
                (
                    "POST",
                    format!("{p}/units/a.service"),
                    Route::MethodNotAllowed(
                        "only GET, PUT and DELETE supported against this resource",
                    ),
                ),
                ("GET", format!("{p}/units/"), Route::NotFound),
                ("GET", format!("{p}/units/a.service/"), Route::NotFound),
                ("GET", format!("{p}/units/a/b.service"), Route::NotFound),
                ("GET", format!("{p}/state"), Route::StatesList),
                (
                    "DELETE",
                    format!("{p}/state"),
                    Route::MethodNotAllowed(ONLY_GET),
                ),
                (
                    "GET",
                    format!("{p}/state/a.service"),
                    Route::StateGet(u("a.service")),
                ),
                (
                    "PUT",
                    format!("{p}/state/a.service"),
                    Route::MethodNotAllowed(ONLY_GET),
                ),
                ("GET", format!("{p}/state/"), Route::NotFound),
                ("GET", p.to_string(), Route::MethodNotAllowed("")),
                ("GET", format!("{p}/"), Route::NotFound),
                ("GET", format!("{p}/nope"), Route::NotFound),
                ("GET", format!("{p}units"), Route::NotFound),
                ("GET", format!("{p}/plan"), Route::PlanGet),
                ("POST", format!("{p}/plan"), Route::PlanPost),
                (
                    "PUT",
                    format!("{p}/plan"),
                    Route::MethodNotAllowed("only GET and POST supported against this resource"),
                ),
                ("GET", format!("{p}/plan/x"), Route::NotFound),
                (
                    "GET",
                    format!("{p}/why/a.service"),
                    Route::Why(u("a.service")),
                ),
                (
                    "POST",
                    format!("{p}/why/a.service"),
                    Route::MethodNotAllowed(ONLY_GET),
                ),
                ("GET", format!("{p}/why"), Route::NotFound),
                ("GET", format!("{p}/drain"), Route::DrainList),
                (
                    "PUT",
                    format!("{p}/drain"),
                    Route::MethodNotAllowed(ONLY_GET),
                ),
                ("GET", format!("{p}/drain/m1"), Route::DrainGet(u("m1"))),
                ("PUT", format!("{p}/drain/m1"), Route::DrainPut(u("m1"))),
                (
                    "DELETE",
                    format!("{p}/drain/m1"),
                    Route::DrainDelete(u("m1")),
                ),
                ("GET", format!("{p}/drain/m1/x"), Route::NotFound),
                (
                    "GET",
                    format!("{p}/rollouts/g.service"),
                    Route::RolloutGet(u("g.service")),
                ),
                (
                    "PUT",
                    format!("{p}/rollouts/g.service"),
                    Route::RolloutPut(u("g.service")),
                ),
                (
                    "DELETE",
                    format!("{p}/rollouts/g.service"),
                    Route::RolloutDelete(u("g.service")),
                ),
                ("GET", format!("{p}/rollouts"), Route::NotFound),
                ("GET", format!("{p}/events"), Route::Events),
                (
                    "POST",
                    format!("{p}/events"),
                    Route::MethodNotAllowed(ONLY_GET),
                ),
                ("GET", format!("{p}/events/x"), Route::NotFound),
            ];
            for (method, path, want) in cases {
                assert_eq!(r(method, &path), want, "{method} {path}");
            }
        }
        assert_eq!(r("GET", "/"), Route::MethodNotAllowed(""));
        assert_eq!(r("GET", "/metrics"), Route::Metrics);
        assert_eq!(r("GET", "/ui"), Route::Ui(String::new()));
        assert_eq!(r("GET", "/ui/"), Route::Ui(String::new()));
        assert_eq!(r("GET", "/ui/app.js"), Route::Ui("app.js".into()));
        assert_eq!(r("POST", "/ui"), Route::MethodNotAllowed(ONLY_GET));
        assert_eq!(r("GET", "/uix"), Route::NotFound);
        assert!(Route::Ui(String::new()).changes_nothing());
        assert_eq!(r("GET", "/fleet/v2/units"), Route::NotFound);
        assert_eq!(r("GET", ""), Route::NotFound);
        assert!(Route::PlanPost.changes_nothing());
        assert!(Route::Why(u("a.service")).changes_nothing());
        assert!(Route::Output(u("a.service")).changes_nothing());
        assert_eq!(
            r("GET", "/fleet/v1/output/a.service"),
            Route::Output(u("a.service"))
        );
        assert_eq!(
            r("PUT", "/fleet/v1/output/a.service"),
            Route::MethodNotAllowed(ONLY_GET)
        );
        assert_eq!(r("GET", "/fleet/v1/output"), Route::NotFound);
        assert!(Route::Events.changes_nothing());
        assert!(Route::Leases.changes_nothing());
        assert!(!Route::UnitPut(u("a.service")).changes_nothing());
        assert!(!Route::MachinesPatch.changes_nothing());
        assert!(!Route::DrainPut(u("m1")).changes_nothing());
        assert!(!Route::DrainDelete(u("m1")).changes_nothing());
        assert!(Route::DrainList.changes_nothing());
        assert!(!Route::RolloutPut(u("g.service")).changes_nothing());
        assert!(!Route::RolloutDelete(u("g.service")).changes_nothing());
        assert!(Route::RolloutGet(u("g.service")).changes_nothing());
        assert_eq!(
            Route::RolloutPut(u("g.service")).label(),
            "rollouts/{unitName}"
        );
    }

    #[test]
    fn decoding() {
        assert_eq!(
            decode_path("/fleet/v1/units/foo%40bar.service").as_deref(),
            Some("/fleet/v1/units/foo@bar.service")
        );
        assert_eq!(
            r(
                "GET",
                &decode_path("/fleet/v1/units/a%2Fb.service").unwrap()
            ),
            Route::NotFound
        );
        assert_eq!(decode_path("/%ff"), None);
    }

    #[test]
    fn not_found_messages_name_the_problem() {
        let m = not_found_message("/fleet/v1/units/../../etc/passwd");
        assert!(m.contains("one path segment"), "{m}");
        assert!(m.contains("../../etc/passwd"), "{m}");
        let m = not_found_message("/fleet/v1/state/");
        assert!(m.contains("empty"), "{m}");
        let m = not_found_message("/nope");
        assert!(m.contains("/fleet/v1"), "{m}");
        let long = format!("/fleet/v1/units/{}/x", "é".repeat(1000));
        assert!(not_found_message(&long).len() < 700);
    }
}

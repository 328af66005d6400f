//! How a service is started, stopped and restarted: `TimeoutStartSec=`, `TimeoutStopSec=`,
//! `KillMode=`, `KillSignal=`, `Restart=`, `RestartSec=` and the start rate limit.

use super::{ConfigError, Options, ServiceType};
use std::time::Duration;

/// Why a value is not one of systemd's time spans.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimespanError {
    #[error("empty time span")]
    Empty,
    #[error("expected a number at {0:?}")]
    ExpectedNumber(String),
    #[error("bad number {0:?}")]
    BadNumber(String),
    #[error("unknown time unit {0:?}")]
    UnknownUnit(String),
    #[error("time span {0:?} out of range")]
    OutOfRange(String),
}

/// systemd's default for `TimeoutStartSec=`/`TimeoutStopSec=` (`DefaultTimeoutStartSec`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);
/// systemd's default `RestartSec=`.
pub const DEFAULT_RESTART_SEC: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    No,
    OnSuccess,
    OnFailure,
    OnAbnormal,
    OnAbort,
    Always,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillMode {
    ControlGroup,
    Process,
    Mixed,
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub restart: RestartPolicy,
    pub restart_sec: Duration,
    /// `None` = no timeout.
    pub timeout_start: Option<Duration>,
    pub timeout_stop: Option<Duration>,
    pub kill_mode: KillMode,
    pub kill_signal: nix::sys::signal::Signal,
    pub start_limit_interval: Duration,
    pub start_limit_burst: u32,
}

pub(super) fn read(o: &Options<'_>, service_type: ServiceType) -> Result<Policy, ConfigError> {
    let unit = || o.name.to_string();
    let unknown = |option: &'static str, value: &str| ConfigError::UnknownValue {
        unit: unit(),
        option,
        value: value.into(),
    };
    let restart = match o.last("Restart").as_deref() {
        None | Some("") | Some("no") => RestartPolicy::No,
        Some("on-success") => RestartPolicy::OnSuccess,
        Some("on-failure") => RestartPolicy::OnFailure,
        Some("on-abnormal") => RestartPolicy::OnAbnormal,
        Some("on-abort") => RestartPolicy::OnAbort,
        // No watchdog here, so a watchdog timeout never happens.
        Some("on-watchdog") => RestartPolicy::No,
        Some("always") => RestartPolicy::Always,
        Some(other) => return Err(unknown("Restart", other)),
    };
    let bad_span = |option: &'static str, value: String, problem| ConfigError::Timespan {
        unit: unit(),
        option,
        value,
        problem,
    };
    let span = |key: &'static str| -> Result<Option<Option<Duration>>, ConfigError> {
        match o.last(key) {
            None => Ok(None),
            Some(v) => match parse_timespan(&v) {
                Ok(d) => Ok(Some(d)),
                Err(problem) => Err(bad_span(key, v, problem)),
            },
        }
    };
    // A zero timeout means "no timeout", as in systemd.
    let timeout = |v: Option<Duration>| v.filter(|d| !d.is_zero());
    let both = span("TimeoutSec")?;
    let default_start = if service_type == ServiceType::Oneshot {
        None
    } else {
        Some(DEFAULT_TIMEOUT)
    };
    let timeout_start = match span("TimeoutStartSec")?.or(both) {
        Some(v) => timeout(v),
        None => default_start,
    };
    let timeout_stop = match span("TimeoutStopSec")?.or(both) {
        Some(v) => timeout(v),
        None => Some(DEFAULT_TIMEOUT),
    };
    let restart_sec = match span("RestartSec")? {
        Some(v) => v.unwrap_or(Duration::MAX),
        None => DEFAULT_RESTART_SEC,
    };
    let kill_mode = match o.last("KillMode").as_deref() {
        None | Some("") | Some("control-group") => KillMode::ControlGroup,
        Some("process") => KillMode::Process,
        Some("mixed") => KillMode::Mixed,
        Some("none") => KillMode::None,
        Some(other) => return Err(unknown("KillMode", other)),
    };
    let kill_signal = match o.last("KillSignal") {
        None => nix::sys::signal::Signal::SIGTERM,
        Some(v) => parse_signal(&v).ok_or_else(|| unknown("KillSignal", &v))?,
    };
    // systemd reads the start limit from [Unit]; older units set it in [Service].
    let start_limit_interval = match o
        .last_in_unit("StartLimitIntervalSec")
        .or_else(|| o.last("StartLimitInterval"))
    {
        None => Duration::from_secs(10),
        Some(v) => match parse_timespan(&v) {
            Ok(d) => d.unwrap_or(Duration::ZERO),
            Err(problem) => return Err(bad_span("StartLimitIntervalSec", v, problem)),
        },
    };
    let start_limit_burst = match o
        .last_in_unit("StartLimitBurst")
        .or_else(|| o.last("StartLimitBurst"))
    {
        None => 5,
        Some(v) => v.parse().map_err(|_| ConfigError::NotANumber {
            unit: unit(),
            option: "StartLimitBurst",
            value: v,
        })?,
    };
    Ok(Policy {
        restart,
        restart_sec,
        timeout_start,
        timeout_stop,
        kill_mode,
        kill_signal,
        start_limit_interval,
        start_limit_burst,
    })
}

/// `SIGTERM`, `TERM` or a number.
pub fn parse_signal(v: &str) -> Option<nix::sys::signal::Signal> {
    use std::str::FromStr;
    let v = v.trim();
    if let Ok(n) = v.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).ok();
    }
    let full = if v.starts_with("SIG") {
        v.to_string()
    } else {
        format!("SIG{v}")
    };
    nix::sys::signal::Signal::from_str(&full).ok()
}

/// systemd's time span: `5s`, `1min 30s`, `500ms`, `1.5h`, a bare number = seconds;
/// `infinity` = `None`.
pub fn parse_timespan(v: &str) -> Result<Option<Duration>, TimespanError> {
    let v = v.trim();
    if v == "infinity" {
        return Ok(None);
    }
    if v.is_empty() {
        return Err(TimespanError::Empty);
    }
    let mut total = 0f64;
    let mut rest = v;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(TimespanError::ExpectedNumber(rest.into()));
        }
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| TimespanError::BadNumber(rest[..num_len].into()))?;
        rest = rest[num_len..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let seconds = match unit {
            "" | "s" | "sec" | "second" | "seconds" => 1.0,
            "us" | "usec" | "μs" => 1e-6,
            "ms" | "msec" => 1e-3,
            "m" | "min" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86400.0,
            "w" | "week" | "weeks" => 7.0 * 86400.0,
            "M" | "month" | "months" => 30.44 * 86400.0,
            "y" | "year" | "years" => 365.25 * 86400.0,
            "ns" | "nsec" => 1e-9,
            other => return Err(TimespanError::UnknownUnit(other.into())),
        };
        total += number * seconds;
    }
    Duration::try_from_secs_f64(total)
        .map(Some)
        .map_err(|_| TimespanError::OutOfRange(v.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespans() {
        let cases: &[(&str, Option<Option<Duration>>)] = &[
            ("5s", Some(Some(Duration::from_secs(5)))),
            ("5", Some(Some(Duration::from_secs(5)))),
            ("1min 30s", Some(Some(Duration::from_secs(90)))),
            ("1min30s", Some(Some(Duration::from_secs(90)))),
            ("500ms", Some(Some(Duration::from_millis(500)))),
            ("1.5s", Some(Some(Duration::from_millis(1500)))),
            ("2h", Some(Some(Duration::from_secs(7200)))),
            ("0", Some(Some(Duration::ZERO))),
            ("infinity", Some(None)),
            ("", None),
            ("5 parsecs", None),
            ("s", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_timespan(input).ok(), *want, "{input:?}");
        }
    }
}

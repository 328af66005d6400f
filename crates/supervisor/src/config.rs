//! The service subset of a unit file the process supervisor runs, read the way systemd reads
//! it: time spans, command lines (quotes, C escapes, `$VAR`/`${VAR}`), `Environment=`
//! assignments, environment files and `%` specifiers.
//!
//! Hand-written because no crate implements systemd's dialect (shell-word crates differ on
//! escapes inside single quotes and on variable expansion; duration crates reject bare numbers
//! and `infinity`). Everything here is pure and tested with tables.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use unit::UnitFile;

/// systemd's default for `TimeoutStartSec=`/`TimeoutStopSec=` (`DefaultTimeoutStartSec`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);
/// systemd's default `RestartSec=`.
pub const DEFAULT_RESTART_SEC: Duration = Duration::from_millis(100);
/// systemd's fixed search path for relative executables (systemd >= 239).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    Simple,
    Exec,
    Oneshot,
    Forking,
}

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

/// One `ExecXxx=` command: its words before environment expansion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecCommand {
    /// `-` prefix: a failure of this command is ignored.
    pub ignore_failure: bool,
    /// `:` prefix: no environment variable expansion.
    pub no_env_expand: bool,
    pub words: Vec<String>,
}

/// Everything the supervisor needs to run one service, validated at load time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    pub service_type: ServiceType,
    pub exec_start_pre: Vec<ExecCommand>,
    pub exec_start: Vec<ExecCommand>,
    pub exec_start_post: Vec<ExecCommand>,
    pub exec_stop: Vec<ExecCommand>,
    pub exec_stop_post: Vec<ExecCommand>,
    /// `Environment=` assignments in order (later ones win).
    pub environment: Vec<(String, String)>,
    /// `EnvironmentFile=` paths; `true` = optional (`-` prefix).
    pub environment_files: Vec<(PathBuf, bool)>,
    /// `WorkingDirectory=`: the path (`~` already resolved to the user's home by the caller's
    /// specifier context) and whether a missing directory is ignored (`-` prefix).
    pub working_directory: Option<(String, bool)>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub restart: RestartPolicy,
    pub restart_sec: Duration,
    /// `None` = no timeout.
    pub timeout_start: Option<Duration>,
    pub timeout_stop: Option<Duration>,
    pub kill_mode: KillMode,
    pub kill_signal: nix::sys::signal::Signal,
    pub remain_after_exit: bool,
    pub pid_file: Option<PathBuf>,
    pub start_limit_interval: Duration,
    pub start_limit_burst: u32,
}

/// What `%` specifiers expand to for one unit.
#[derive(Clone, Debug, Default)]
pub struct Specifiers {
    pub name: String,
    pub hostname: String,
    pub machine_id: String,
    pub boot_id: String,
    pub user: String,
    pub uid: String,
    pub home: String,
}

impl Specifiers {
    /// Splits `prefix@instance.suffix` without validating: the name was validated by fleet.
    fn parts(&self) -> (&str, &str, &str) {
        let (stem, _suffix) = self.name.rsplit_once('.').unwrap_or((&self.name, ""));
        match stem.split_once('@') {
            Some((prefix, instance)) => (stem, prefix, instance),
            None => (stem, stem, ""),
        }
    }

    /// systemd's specifier expansion; an unknown specifier is an error, as in systemd.
    pub fn expand(&self, s: &str) -> Result<String, String> {
        let (stem, prefix, instance) = self.parts();
        let mut out = String::with_capacity(s.len());
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let Some(spec) = chars.next() else {
                return Err(format!(
                    "{s:?}: lone '%' at the end (write %% for a percent sign)"
                ));
            };
            match spec {
                '%' => out.push('%'),
                'n' => out.push_str(&self.name),
                'N' => out.push_str(stem),
                'p' | 'P' => out.push_str(prefix),
                'i' | 'I' => out.push_str(instance),
                'f' => {
                    out.push('/');
                    out.push_str(if instance.is_empty() { prefix } else { instance });
                }
                'H' | 'l' => out.push_str(&self.hostname),
                'm' => out.push_str(&self.machine_id),
                'b' => out.push_str(&self.boot_id),
                'u' => out.push_str(&self.user),
                'U' => out.push_str(&self.uid),
                'h' => out.push_str(&self.home),
                't' => out.push_str("/run"),
                'T' => out.push_str("/tmp"),
                'V' => out.push_str("/var/tmp"),
                'S' => out.push_str("/var/lib"),
                'C' => out.push_str("/var/cache"),
                'L' => out.push_str("/var/log"),
                'E' => out.push_str("/etc"),
                other => {
                    return Err(format!(
                        "{s:?}: unknown specifier %{other} (the process supervisor knows %n %N %p %P %i %I %f %H %l %m %b %u %U %h %t %T %V %S %C %L %E; write %% for a percent sign)"
                    ))
                }
            }
        }
        Ok(out)
    }
}

/// Why a unit cannot be run by the process supervisor. The text is shown to users as is.
pub type ConfigError = String;

const SERVICE: &str = "Service";

/// Reads the service subset of `file` for unit `name`.
pub fn service_config(
    name: &str,
    file: &UnitFile,
    spec: &Specifiers,
) -> Result<ServiceConfig, ConfigError> {
    let suffix = name.rsplit_once('.').map(|(_, s)| s).unwrap_or("");
    if suffix != "service" {
        return Err(format!(
            "{name}: the process supervisor only runs .service units; a .{suffix} unit needs systemd (run fleetd with unit_manager=systemd on a host with systemd)"
        ));
    }
    let last = |key: &str| -> Option<String> {
        file.values(SERVICE, key)
            .last()
            .map(|v| v.trim().to_string())
    };
    let service_type = match last("Type").as_deref() {
        None | Some("") | Some("simple") | Some("idle") => ServiceType::Simple,
        Some("exec") => ServiceType::Exec,
        Some("oneshot") => ServiceType::Oneshot,
        Some("forking") => ServiceType::Forking,
        Some(other @ ("notify" | "notify-reload" | "dbus")) => {
            return Err(format!(
                "{name}: Type={other} is not supported by the process supervisor (no sd_notify socket or D-Bus); use Type=simple, exec, oneshot or forking, or run the unit under systemd"
            ))
        }
        Some(other) => return Err(format!("{name}: unknown Type={other}")),
    };
    let commands = |key: &str| -> Result<Vec<ExecCommand>, ConfigError> {
        let mut out = Vec::new();
        for value in file.values(SERVICE, key) {
            if value.trim().is_empty() {
                // An empty assignment resets the list, as in systemd.
                out.clear();
                continue;
            }
            let expanded = spec
                .expand(value)
                .map_err(|e| format!("{name}: {key}={e}"))?;
            out.extend(
                parse_exec_line(&expanded).map_err(|e| format!("{name}: {key}={value}: {e}"))?,
            );
        }
        Ok(out)
    };
    let exec_start = commands("ExecStart")?;
    let exec_start_pre = commands("ExecStartPre")?;
    let exec_start_post = commands("ExecStartPost")?;
    let exec_stop = commands("ExecStop")?;
    let exec_stop_post = commands("ExecStopPost")?;
    match (service_type, exec_start.len()) {
        (_, 0) if service_type != ServiceType::Oneshot => {
            return Err(format!(
                "{name}: no ExecStart= (only Type=oneshot services may omit it)"
            ))
        }
        (ServiceType::Oneshot, _) | (_, 1) => {}
        _ => {
            return Err(format!(
                "{name}: several ExecStart= lines are only allowed with Type=oneshot"
            ))
        }
    }

    let mut environment: Vec<(String, String)> = Vec::new();
    for value in file.values(SERVICE, "Environment") {
        let expanded = spec
            .expand(value)
            .map_err(|e| format!("{name}: Environment={e}"))?;
        let words =
            split_words(&expanded).map_err(|e| format!("{name}: Environment={value}: {e}"))?;
        if words.is_empty() {
            environment.clear();
        }
        for word in words {
            // systemd ignores (with a warning) words that are not assignments.
            if let Some((k, v)) = word.split_once('=') {
                if valid_env_name(k) {
                    environment.push((k.to_string(), v.to_string()));
                }
            }
        }
    }
    let mut environment_files = Vec::new();
    for value in file.values(SERVICE, "EnvironmentFile") {
        let value = value.trim();
        if value.is_empty() {
            environment_files.clear();
            continue;
        }
        let (path, optional) = strip_dash(value);
        let path = spec
            .expand(path)
            .map_err(|e| format!("{name}: EnvironmentFile={e}"))?;
        if !path.starts_with('/') {
            return Err(format!(
                "{name}: EnvironmentFile={value}: the path must be absolute"
            ));
        }
        environment_files.push((PathBuf::from(path), optional));
    }
    let working_directory = match last("WorkingDirectory") {
        None => None,
        Some(v) if v.is_empty() => None,
        Some(v) => {
            let (path, optional) = strip_dash(&v);
            let path = spec
                .expand(path)
                .map_err(|e| format!("{name}: WorkingDirectory={e}"))?;
            let path = if path == "~" { spec.home.clone() } else { path };
            if !path.starts_with('/') {
                return Err(format!(
                    "{name}: WorkingDirectory={v}: the path must be absolute or ~"
                ));
            }
            Some((path, optional))
        }
    };
    let expand_opt = |key: &str| -> Result<Option<String>, ConfigError> {
        match last(key) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => spec
                .expand(&v)
                .map(Some)
                .map_err(|e| format!("{name}: {key}={e}")),
        }
    };
    let user = expand_opt("User")?;
    let group = expand_opt("Group")?;
    let restart = match last("Restart").as_deref() {
        None | Some("") | Some("no") => RestartPolicy::No,
        Some("on-success") => RestartPolicy::OnSuccess,
        Some("on-failure") => RestartPolicy::OnFailure,
        Some("on-abnormal") => RestartPolicy::OnAbnormal,
        Some("on-abort") => RestartPolicy::OnAbort,
        // No watchdog here, so a watchdog timeout never happens.
        Some("on-watchdog") => RestartPolicy::No,
        Some("always") => RestartPolicy::Always,
        Some(other) => return Err(format!("{name}: unknown Restart={other}")),
    };
    let span = |key: &str| -> Result<Option<Option<Duration>>, ConfigError> {
        match last(key) {
            None => Ok(None),
            Some(v) => parse_timespan(&v)
                .map(Some)
                .map_err(|e| format!("{name}: {key}={v}: {e}")),
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
    let kill_mode = match last("KillMode").as_deref() {
        None | Some("") | Some("control-group") => KillMode::ControlGroup,
        Some("process") => KillMode::Process,
        Some("mixed") => KillMode::Mixed,
        Some("none") => KillMode::None,
        Some(other) => return Err(format!("{name}: unknown KillMode={other}")),
    };
    let kill_signal = match last("KillSignal") {
        None => nix::sys::signal::Signal::SIGTERM,
        Some(v) => parse_signal(&v).ok_or_else(|| format!("{name}: unknown KillSignal={v}"))?,
    };
    let remain_after_exit = match last("RemainAfterExit") {
        None => false,
        Some(v) => {
            parse_bool(&v).ok_or_else(|| format!("{name}: RemainAfterExit={v} is not a boolean"))?
        }
    };
    let pid_file = expand_opt("PIDFile")?.map(PathBuf::from);
    if service_type == ServiceType::Forking && pid_file.is_none() {
        return Err(format!(
            "{name}: Type=forking needs PIDFile= with the process supervisor (it cannot guess the main process without cgroups)"
        ));
    }
    let unit_last = |key: &str| {
        file.values("Unit", key)
            .last()
            .map(|v| v.trim().to_string())
    };
    let start_limit_interval =
        match unit_last("StartLimitIntervalSec").or_else(|| last("StartLimitInterval")) {
            None => Duration::from_secs(10),
            Some(v) => parse_timespan(&v)
                .map_err(|e| format!("{name}: StartLimitIntervalSec={v}: {e}"))?
                .unwrap_or(Duration::ZERO),
        };
    let start_limit_burst = match unit_last("StartLimitBurst").or_else(|| last("StartLimitBurst")) {
        None => 5,
        Some(v) => v
            .parse()
            .map_err(|_| format!("{name}: StartLimitBurst={v} is not a number"))?,
    };
    Ok(ServiceConfig {
        service_type,
        exec_start_pre,
        exec_start,
        exec_start_post,
        exec_stop,
        exec_stop_post,
        environment,
        environment_files,
        working_directory,
        user,
        group,
        restart,
        restart_sec,
        timeout_start,
        timeout_stop,
        kill_mode,
        kill_signal,
        remain_after_exit,
        pid_file,
        start_limit_interval,
        start_limit_burst,
    })
}

fn strip_dash(v: &str) -> (&str, bool) {
    match v.strip_prefix('-') {
        Some(rest) => (rest, true),
        None => (v, false),
    }
}

pub fn valid_env_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
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
pub fn parse_timespan(v: &str) -> Result<Option<Duration>, String> {
    let v = v.trim();
    if v == "infinity" {
        return Ok(None);
    }
    if v.is_empty() {
        return Err("empty time span".into());
    }
    let mut total = 0f64;
    let mut rest = v;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("bad number {:?}", &rest[..num_len]))?;
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
            other => return Err(format!("unknown time unit {other:?}")),
        };
        total += number * seconds;
    }
    Duration::try_from_secs_f64(total)
        .map(Some)
        .map_err(|_| format!("time span {v:?} out of range"))
}

/// Splits a command line (or an `Environment=` value) into words as systemd does: whitespace
/// separates, `"..."` and `'...'` quote (also inside a word), C escapes are decoded, a
/// backslash-newline continuation counts as whitespace. A lone `;` word is returned as `;`
/// and an escaped one as `\;` so that the caller can tell them apart.
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let Some(e) = chars.next() else {
                    return Err("trailing backslash".into());
                };
                if e == '\n' {
                    // Continuation line kept by the unit-file parser.
                    if quote.is_none() {
                        if in_word {
                            words.push(std::mem::take(&mut cur));
                            in_word = false;
                        }
                    } else {
                        cur.push(' ');
                    }
                    continue;
                }
                in_word = true;
                if e == ';'
                    && quote.is_none()
                    && cur.is_empty()
                    && matches!(chars.peek(), None | Some(' ' | '\t' | '\n'))
                {
                    cur.push_str("\\;");
                    continue;
                }
                cur.push(unescape(e, &mut chars)?);
            }
            '"' | '\'' if quote.is_none() => {
                quote = Some(c);
                in_word = true;
            }
            q if Some(q) == quote => quote = None,
            ' ' | '\t' | '\n' | '\r' if quote.is_none() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            other => {
                in_word = true;
                cur.push(other);
            }
        }
    }
    if let Some(q) = quote {
        return Err(format!("unterminated {q} quote"));
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

fn unescape(e: char, chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<char, String> {
    let mut take_digits = |n: usize, radix: u32| -> Result<u32, String> {
        let mut v = 0u32;
        for _ in 0..n {
            let d = chars
                .next()
                .and_then(|c| c.to_digit(radix))
                .ok_or_else(|| format!("bad escape \\{e}: expected {n} digits"))?;
            v = v * radix + d;
        }
        Ok(v)
    };
    let c = match e {
        'a' => '\x07',
        'b' => '\x08',
        'f' => '\x0c',
        'n' => '\n',
        'r' => '\r',
        't' => '\t',
        'v' => '\x0b',
        's' => ' ',
        'x' => char::from_u32(take_digits(2, 16)?).ok_or("bad \\x escape")?,
        'u' => char::from_u32(take_digits(4, 16)?).ok_or("bad \\u escape")?,
        'U' => char::from_u32(take_digits(8, 16)?).ok_or("bad \\U escape")?,
        '0'..='7' => {
            let rest = take_digits(2, 8)?;
            let v = (e as u32 - '0' as u32) * 64 + rest;
            if v == 0 {
                return Err("\\000 (NUL) is not allowed".into());
            }
            char::from_u32(v).ok_or("bad octal escape")?
        }
        other => other,
    };
    Ok(c)
}

/// Parses one `ExecXxx=` value into its commands (several when separated by a lone `;`).
pub fn parse_exec_line(v: &str) -> Result<Vec<ExecCommand>, String> {
    let words = split_words(v)?;
    let mut out = Vec::new();
    for group in words.split(|w| w == ";") {
        let mut group: Vec<String> = group
            .iter()
            .map(|w| {
                if w == "\\;" {
                    ";".to_string()
                } else {
                    w.clone()
                }
            })
            .collect();
        if group.is_empty() {
            continue;
        }
        let mut ignore_failure = false;
        let mut no_env_expand = false;
        let first = group.remove(0);
        let mut rest = first.as_str();
        loop {
            match rest.chars().next() {
                Some('-') => ignore_failure = true,
                Some(':') => no_env_expand = true,
                Some(p @ ('@' | '+' | '!')) => {
                    return Err(format!(
                        "the {p:?} prefix is not supported by the process supervisor (it runs every command as the unit's user, with argv[0] = the executable); remove it or run the unit under systemd"
                    ))
                }
                _ => break,
            }
            rest = &rest[1..];
        }
        if rest.is_empty() {
            return Err("no executable after the prefixes".into());
        }
        group.insert(0, rest.to_string());
        out.push(ExecCommand {
            ignore_failure,
            no_env_expand,
            words: group,
        });
    }
    Ok(out)
}

/// systemd's `replace_env_argv`: a word that is exactly `$NAME` becomes the value split at
/// whitespace (zero or more words); `${NAME}` anywhere becomes the value as is; `$$` is `$`.
pub fn expand_argv(words: &[String], env: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for w in words {
        if let Some(name) = w.strip_prefix('$') {
            if valid_env_name(name) {
                if let Some(v) = env.get(name) {
                    out.extend(v.split_whitespace().map(str::to_string));
                }
                continue;
            }
        }
        out.push(expand_curly(w, env));
    }
    out
}

fn expand_curly(w: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(w.len());
    let mut rest = w;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(after_dollar) = after.strip_prefix('$') {
            out.push('$');
            rest = after_dollar;
        } else if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(end) if valid_env_name(&inner[..end]) => {
                    out.push_str(env.get(&inner[..end]).map(String::as_str).unwrap_or(""));
                    rest = &inner[end + 1..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Parses an environment file the way systemd does: `KEY=VALUE` lines, `#`/`;` comments,
/// values in double quotes (with `\` escapes) or single quotes (literal), unquoted values
/// trimmed, backslash-newline continuation. Lines without a valid assignment are skipped.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        // Start of a line: skip leading whitespace and blank lines.
        while matches!(chars.peek(), Some(' ' | '\t' | '\r' | '\n')) {
            chars.next();
        }
        let Some(&first) = chars.peek() else { break };
        if first == '#' || first == ';' {
            for c in chars.by_ref() {
                if c == '\n' {
                    break;
                }
            }
            continue;
        }
        let mut key = String::new();
        let mut saw_eq = false;
        for c in chars.by_ref() {
            match c {
                '=' => {
                    saw_eq = true;
                    break;
                }
                '\n' => break,
                c => key.push(c),
            }
        }
        let key = key.trim().to_string();
        if !saw_eq {
            continue;
        }
        while matches!(chars.peek(), Some(' ' | '\t')) {
            chars.next();
        }
        let mut value = String::new();
        let mut trailing_ws = 0usize;
        let mut quote: Option<char> = None;
        while let Some(c) = chars.next() {
            match (quote, c) {
                (None, '\n') => break,
                (None, '"' | '\'') => {
                    quote = Some(c);
                    trailing_ws = 0;
                }
                (Some(q), c) if c == q => quote = None,
                (Some('\''), c) => value.push(c),
                (_, '\\') => match chars.next() {
                    Some('\n') => {}
                    Some(e) => {
                        value.push(e);
                        trailing_ws = 0;
                    }
                    None => {}
                },
                (None, c) if c == ' ' || c == '\t' || c == '\r' => {
                    value.push(c);
                    trailing_ws += 1;
                }
                (_, c) => {
                    value.push(c);
                    trailing_ws = 0;
                }
            }
        }
        value.truncate(value.len() - trailing_ws.min(value.len()));
        if valid_env_name(&key) {
            out.push((key, value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use unit::UnitOption;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

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

    #[test]
    fn command_lines() {
        type Want = Result<Vec<(bool, Vec<&'static str>)>, ()>;
        let cases: &[(&str, Want)] = &[
            (
                "/bin/echo a b",
                Ok(vec![(false, vec!["/bin/echo", "a", "b"])]),
            ),
            ("-/bin/false", Ok(vec![(true, vec!["/bin/false"])])),
            (
                r#"/bin/sh -c "echo 'x y'; exit 1""#,
                Ok(vec![(false, vec!["/bin/sh", "-c", "echo 'x y'; exit 1"])]),
            ),
            (
                r#"/bin/echo a"b c"d 'e\tf'"#,
                Ok(vec![(false, vec!["/bin/echo", "ab cd", "e\tf"])]),
            ),
            (
                r"/bin/echo \x41\101\s",
                Ok(vec![(false, vec!["/bin/echo", "AA "])]),
            ),
            (
                "/bin/echo a ; -/bin/true",
                Ok(vec![
                    (false, vec!["/bin/echo", "a"]),
                    (true, vec!["/bin/true"]),
                ]),
            ),
            (r"/bin/echo \;", Ok(vec![(false, vec!["/bin/echo", ";"])])),
            (
                "/bin/echo a \\\n  b",
                Ok(vec![(false, vec!["/bin/echo", "a", "b"])]),
            ),
            ("@/bin/echo x", Err(())),
            ("+/bin/echo", Err(())),
            ("/bin/echo \"open", Err(())),
            ("/bin/echo trailing\\", Err(())),
        ];
        for (input, want) in cases {
            let got = parse_exec_line(input)
                .map(|cmds| {
                    cmds.into_iter()
                        .map(|c| (c.ignore_failure, c.words))
                        .collect::<Vec<_>>()
                })
                .map_err(|_| ());
            let want = want
                .clone()
                .map(|v| v.into_iter().map(|(i, w)| (i, s(&w))).collect::<Vec<_>>());
            assert_eq!(got, want, "{input:?}");
        }
    }

    #[test]
    fn env_expansion() {
        let env: BTreeMap<String, String> = [("A", "one two"), ("B", "x")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cases: &[(&[&str], &[&str])] = &[
            (&["/bin/echo", "$A"], &["/bin/echo", "one", "two"]),
            (&["/bin/echo", "${A}"], &["/bin/echo", "one two"]),
            (&["/bin/echo", "pre${B}post"], &["/bin/echo", "prexpost"]),
            (&["/bin/echo", "$UNSET"], &["/bin/echo"]),
            (&["/bin/echo", "${UNSET}"], &["/bin/echo", ""]),
            (&["/bin/echo", "$$A"], &["/bin/echo", "$A"]),
            (&["/bin/echo", "a$B"], &["/bin/echo", "a$B"]),
        ];
        for (input, want) in cases {
            assert_eq!(expand_argv(&s(input), &env), s(want), "{input:?}");
        }
    }

    #[test]
    fn env_files() {
        let text = "# comment\n; other\nA=1\n  B = spaced  \nC=\"quoted # not comment\"\nD='single \\n'\nE=esc\\\"aped\nF=cont\\\ninued\nbad line\n1X=no\nG=\n";
        let got = parse_env_file(text);
        let want: Vec<(String, String)> = [
            ("A", "1"),
            ("B", "spaced"),
            ("C", "quoted # not comment"),
            ("D", "single \\n"),
            ("E", "esc\"aped"),
            ("F", "continued"),
            ("G", ""),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn specifiers() {
        let spec = Specifiers {
            name: "web@8080.service".into(),
            hostname: "h1".into(),
            ..Default::default()
        };
        assert_eq!(
            spec.expand("%n %N %p %i %H %% %f").unwrap(),
            "web@8080.service web@8080 web 8080 h1 % /8080"
        );
        assert!(spec.expand("date +%s").is_err());
        assert!(spec.expand("trailing %").is_err());
    }

    fn file(lines: &[(&str, &str, &str)]) -> UnitFile {
        UnitFile::from_options(
            lines
                .iter()
                .map(|(s, n, v)| UnitOption {
                    section: s.to_string(),
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
        )
    }

    #[test]
    fn service_configs() {
        let spec = Specifiers {
            name: "a.service".into(),
            ..Default::default()
        };
        let ok = file(&[
            ("Service", "ExecStart", "/bin/sleep 100"),
            ("Service", "Environment", "\"A=1 2\" B=3 junk"),
            ("Service", "Environment", "C=4"),
            ("Service", "TimeoutStopSec", "0"),
            ("Service", "KillSignal", "SIGINT"),
            ("Service", "Restart", "on-failure"),
            ("Service", "RestartSec", "1min 30s"),
            ("Service", "Type", "idle"),
        ]);
        let c = service_config("a.service", &ok, &spec).unwrap();
        assert_eq!(c.service_type, ServiceType::Simple);
        assert_eq!(
            c.environment,
            vec![
                ("A".into(), "1 2".into()),
                ("B".into(), "3".into()),
                ("C".into(), "4".into())
            ]
        );
        assert_eq!(c.timeout_stop, None);
        assert_eq!(c.timeout_start, Some(DEFAULT_TIMEOUT));
        assert_eq!(c.kill_signal, nix::sys::signal::Signal::SIGINT);
        assert_eq!(c.restart, RestartPolicy::OnFailure);
        assert_eq!(c.restart_sec, Duration::from_secs(90));

        let refused: &[(&str, UnitFile)] = &[
            ("a.socket", file(&[("Socket", "ListenStream", "80")])),
            (
                "a.service",
                file(&[
                    ("Service", "Type", "notify"),
                    ("Service", "ExecStart", "/bin/true"),
                ]),
            ),
            ("a.service", file(&[("Service", "ExecStart", "+/bin/true")])),
            ("a.service", file(&[("Service", "Type", "simple")])),
            (
                "a.service",
                file(&[
                    ("Service", "ExecStart", "/bin/a"),
                    ("Service", "ExecStart", "/bin/b"),
                ]),
            ),
            (
                "a.service",
                file(&[
                    ("Service", "Type", "forking"),
                    ("Service", "ExecStart", "/bin/a"),
                ]),
            ),
            (
                "a.service",
                file(&[
                    ("Service", "ExecStart", "/bin/a"),
                    ("Service", "KillMode", "sometimes"),
                ]),
            ),
        ];
        for (name, f) in refused {
            let spec = Specifiers {
                name: name.to_string(),
                ..Default::default()
            };
            assert!(service_config(name, f, &spec).is_err(), "{name} {f:?}");
        }
        let oneshot = file(&[
            ("Service", "Type", "oneshot"),
            ("Service", "ExecStart", "/bin/a"),
            ("Service", "ExecStart", "/bin/b"),
        ]);
        let c = service_config("a.service", &oneshot, &spec).unwrap();
        assert_eq!(c.exec_start.len(), 2);
        assert_eq!(c.timeout_start, None);
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*") {
            let _ = split_words(&s);
            let _ = parse_exec_line(&s);
            let _ = parse_timespan(&s);
            let _ = parse_env_file(&s);
            let spec = Specifiers { name: s.clone(), ..Default::default() };
            let _ = spec.expand(&s);
        }
    }
}

//! The part of systemd's D-Bus API the agent uses, and the pure helpers around it.
//!
//! Hand-written rather than taken from `zbus_systemd`: that crate follows zbus 5, and we need
//! nine methods of one interface.

use registry::SystemdState;
use zbus::OwnedObjectPath;

/// systemd's bus name, manager object and the path under which units are exported.
pub const SERVICE: &str = "org.freedesktop.systemd1";
pub const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
pub const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit/";

/// One row of `ListUnitsByNames`: name, description, load state, active state, sub state,
/// followed unit, unit object, job id, job type, job object.
pub type UnitStatus = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

/// A change made to the unit configuration: type (`symlink`, `unlink`), file, destination.
pub type UnitFileChange = (String, String, String);

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    async_name = "SystemdManagerProxy"
)]
pub trait SystemdManager {
    /// Turns on the signals systemd sends to this client (unit and job changes).
    fn subscribe(&self) -> zbus::Result<()>;

    /// daemon-reload; the reply comes when the reload is done.
    fn reload(&self) -> zbus::Result<()>;

    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;

    fn link_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<Vec<UnitFileChange>>;

    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<UnitFileChange>)>;

    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<UnitFileChange>>;

    /// systemd >= 230; one call for any number of units.
    fn list_units_by_names(&self, names: &[&str]) -> zbus::Result<Vec<UnitStatus>>;

    /// Every job systemd holds: id, unit, type, state, job object, unit object.
    fn list_jobs(
        &self,
    ) -> zbus::Result<
        Vec<(
            u32,
            String,
            String,
            String,
            OwnedObjectPath,
            OwnedObjectPath,
        )>,
    >;

    /// `initializing`, `starting`, `running`, `degraded`, `maintenance`, `stopping`, ...
    #[zbus(property)]
    fn system_state(&self) -> zbus::Result<String>;
}

/// The targets whose job means the machine is going down.
const SHUTDOWN_TARGETS: &[&str] = &[
    "shutdown.target",
    "poweroff.target",
    "reboot.target",
    "halt.target",
    "kexec.target",
    "soft-reboot.target",
];

/// Whether a job for `unit` means the machine is shutting down.
pub fn is_shutdown_target(unit: &str) -> bool {
    SHUTDOWN_TARGETS.contains(&unit)
}

/// Whether systemd's `SystemState` says the machine is going down.
pub fn is_stopping(system_state: &str) -> bool {
    system_state == "stopping"
}

/// The three states fleet reports, from one `ListUnitsByNames` row.
pub fn state_of(row: &UnitStatus) -> (String, SystemdState) {
    let state = SystemdState {
        load: row.2.clone(),
        active: row.3.clone(),
        sub: row.4.clone(),
    };
    (row.0.clone(), state)
}

/// The unit's object path, as systemd escapes it (`bus_label_escape`): ASCII letters and digits
/// stay, every other byte becomes `_` and two lowercase hex digits.
pub fn unit_path(name: &str) -> String {
    let mut out = String::with_capacity(UNIT_PATH_PREFIX.len() + name.len() * 3);
    out.push_str(UNIT_PATH_PREFIX);
    if name.is_empty() {
        out.push('_');
    }
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// The unit name of a unit object path (the inverse of [`unit_path`]); `None` for other paths
/// and for labels systemd would not produce.
pub fn unit_name_of_path(path: &str) -> Option<String> {
    let label = path.strip_prefix(UNIT_PATH_PREFIX)?;
    if label.contains('/') {
        return None;
    }
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = label.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// systemd's unit types: the suffixes of the files the agent treats as units.
const UNIT_TYPES: &[&str] = &[
    "service",
    "socket",
    "device",
    "mount",
    "automount",
    "swap",
    "target",
    "path",
    "timer",
    "snapshot",
    "slice",
    "scope",
];

/// Whether `name` ends in a suffix of a systemd unit type (fleet ignores other files in
/// `units_directory`).
pub fn has_unit_suffix(name: &str) -> bool {
    match name.rsplit_once('.') {
        Some((stem, suffix)) => !stem.is_empty() && UNIT_TYPES.contains(&suffix),
        None => false,
    }
}

/// A D-Bus failure of `method` on `unit`, worded for a person: names the unit, the method and
/// what systemd said. A refusal that retrying cannot change (a transaction that would undo a
/// job systemd must finish, such as the machine's shutdown) carries [`crate::Refused`].
pub fn method_error(method: &str, unit: &str, err: zbus::Error) -> anyhow::Error {
    if is_destructive(&err) {
        let detail = match &err {
            zbus::Error::MethodError(_, detail, _) => detail.as_deref().unwrap_or("no details"),
            _ => "no details",
        };
        return anyhow::Error::new(crate::Refused(format!(
            "systemd {method} of {unit} refused: {detail} (a job systemd must finish, such as \
             the machine's shutdown, would be undone)"
        )));
    }
    match &err {
        zbus::Error::MethodError(name, detail, _) => anyhow::anyhow!(
            "systemd {method} of {unit} failed: {}: {}",
            name.as_str(),
            detail.as_deref().unwrap_or("no details")
        ),
        _ => anyhow::Error::new(err).context(format!("systemd {method} of {unit} failed")),
    }
}

/// Whether systemd refused a job because it would undo a job it must finish (a shutdown).
pub fn is_destructive(err: &zbus::Error) -> bool {
    matches!(err, zbus::Error::MethodError(name, _, _)
        if name.as_str() == "org.freedesktop.systemd1.TransactionIsDestructive")
}

/// Whether systemd says this client is subscribed already (it keeps subscribers across
/// `daemon-reexec`).
pub fn is_already_subscribed(err: &zbus::Error) -> bool {
    matches!(err, zbus::Error::MethodError(name, _, _)
        if name.as_str() == "org.freedesktop.systemd1.AlreadySubscribed")
}

/// Whether systemd refused because it does not have the unit loaded.
pub fn is_no_such_unit(err: &zbus::Error) -> bool {
    matches!(err, zbus::Error::MethodError(name, _, _)
        if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_paths_are_escaped_as_systemd_does() {
        // Seen from systemd 252: GetUnit("dbus.service").
        assert_eq!(
            unit_path("dbus.service"),
            "/org/freedesktop/systemd1/unit/dbus_2eservice"
        );
        assert_eq!(
            unit_path("hello@a-b.service"),
            "/org/freedesktop/systemd1/unit/hello_40a_2db_2eservice"
        );
        assert_eq!(unit_path(""), "/org/freedesktop/systemd1/unit/_");
    }

    #[test]
    fn unit_paths_round_trip() {
        for name in [
            "dbus.service",
            "a_b@1.2.service",
            "x-y:z\\w.timer",
            "ünï.service",
        ] {
            assert_eq!(
                unit_name_of_path(&unit_path(name)).as_deref(),
                Some(name),
                "{name}"
            );
        }
        assert_eq!(unit_name_of_path("/org/freedesktop/systemd1"), None);
        assert_eq!(unit_name_of_path("/org/freedesktop/systemd1/job/12"), None);
        assert_eq!(
            unit_name_of_path("/org/freedesktop/systemd1/unit/a_2"),
            None
        );
        assert_eq!(
            unit_name_of_path("/org/freedesktop/systemd1/unit/a_zz"),
            None
        );
        assert_eq!(
            unit_name_of_path("/org/freedesktop/systemd1/unit/a/b"),
            None
        );
    }

    #[test]
    fn unit_suffixes() {
        for (name, want) in [
            ("hello.service", true),
            ("a@.service", true),
            ("t.timer", true),
            (".service", false),
            ("hello", false),
            ("hello.conf", false),
            ("hello.service.tmp", false),
        ] {
            assert_eq!(has_unit_suffix(name), want, "{name}");
        }
    }
}

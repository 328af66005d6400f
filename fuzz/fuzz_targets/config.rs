//! fleetd's configuration reader: the INI file as fleetd reads it (`--config`), every line of
//! the input also given as the value of the next `FLEET_*` variable asked for, and Go
//! durations. Bad input must be an error naming the option, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One file per fuzzing process, rewritten for every input.
fn config_file() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("fleet-fuzz-config-{}.conf", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = fleetd::config::parse_ini(text);
    if let Ok(d) = fleetd::config::duration::parse_go_duration(text) {
        let _ = fleetd::config::duration::format_go_duration(d);
    }
    let path = config_file();
    if std::fs::write(path, data).is_err() {
        return;
    }
    let lines = RefCell::new(text.lines());
    let env = |name: &str| -> Option<String> {
        if !name.starts_with("FLEET_") {
            return None;
        }
        lines.borrow_mut().next().map(str::to_string)
    };
    let args = [
        "fleetd".into(),
        "--config".into(),
        path.clone().into_os_string(),
    ];
    if let Ok(fleetd::config::Loaded::Run(cfg)) =
        fleetd::config::load(args, &env, Path::new("/nonexistent/fleet.conf"))
    {
        let _ = cfg.describe();
        let _ = cfg.reload(&|_: &str| None);
    }
});

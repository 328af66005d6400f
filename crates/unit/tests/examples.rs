//! Every unit file in the repository's `examples/` parses, is documented by its first line, is
//! accepted by the API's validation, and says what its name promises.

use std::path::{Path, PathBuf};
use unit::{validate_unit, Requirements, UnitFile, UnitName};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Each example unit file with its name; any other file but the README is an error.
fn example_units() -> Vec<(UnitName, PathBuf)> {
    let dir = examples_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut units = Vec::new();
    for entry in entries {
        let path = entry.expect("directory entry").path();
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 file name");
        if file_name == "README.md" {
            continue;
        }
        let name = UnitName::parse(file_name).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        units.push((name, path));
    }
    units.sort_by(|a, b| a.0.full.cmp(&b.0.full));
    units
}

/// The name an example is scheduled under: templates are tried as their instance `1`.
fn scheduled_name(name: &UnitName) -> String {
    if name.is_template() {
        name.instance_name("1")
    } else {
        name.full.clone()
    }
}

#[test]
fn every_example_parses_and_validates() {
    let units = example_units();
    assert!(
        units.len() >= 6,
        "expected the example units, found {units:?}"
    );
    for (name, path) in &units {
        let text = std::fs::read_to_string(path).expect("read example");
        let first = text.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("# ") && first.len() > 20,
            "{}: first line must be a comment saying what it shows",
            path.display()
        );
        let file = UnitFile::from_path(path).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            file.values("Service", "ExecStart").next().is_some(),
            "{}: no ExecStart",
            path.display()
        );
        assert_eq!(file.check_representable(), Ok(()), "{}", path.display());
        let scheduled = scheduled_name(name);
        let (_, warnings) = Requirements::from_unit_with_warnings(&file, &scheduled);
        assert!(warnings.is_empty(), "{}: {warnings:?}", path.display());
        if let Err(e) = validate_unit(&file, &scheduled) {
            panic!("{} as {scheduled}: {e}", path.display());
        }
        // Without name expansion too, as fleet's API validated.
        if let Err(e) = validate_unit(&file, "") {
            panic!("{} without a name: {e}", path.display());
        }
    }
}

#[test]
fn examples_show_what_they_say() {
    let requirements = |file: &str, as_name: &str| {
        let path = examples_dir().join(file);
        let unit = UnitFile::from_path(&path).unwrap_or_else(|e| panic!("{e}"));
        Requirements::from_unit(&unit, as_name)
    };
    assert_eq!(
        requirements("hello.service", "hello.service"),
        Requirements::default()
    );
    assert_eq!(
        requirements("hello@.service", "hello@1.service"),
        Requirements::default()
    );
    assert!(requirements("monitor.service", "monitor.service").global);

    let web = requirements("web@.service", "web@1.service");
    assert_eq!(web.conflicts, ["web@*.service"]);
    assert!(web.conflicts_with("web@2.service"));

    let sidekick = requirements("web-discovery@.service", "web-discovery@2.service");
    assert_eq!(sidekick.machine_of, ["web@2.service"]);

    let east = requirements("region-east.service", "region-east.service");
    assert_eq!(east.machine_metadata.len(), 1);
    assert!(east.machine_metadata["region"].contains("east"));
}

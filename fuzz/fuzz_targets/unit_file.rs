//! The unit-file parser and everything fleet does with a parsed file: normalization, hashing,
//! validation as the API does it, `[X-Fleet]` requirements, unit names and globs. Besides not
//! panicking, the normalized form of a representable file must parse back to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line as a unit name and a glob pattern against the second.
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let second = lines.next().unwrap_or_default();
    let _ = unit::UnitName::parse(first);
    let _ = unit::mangle(first);
    let _ = unit::glob::path_match(first, second);
    let _ = unit::expand_specifiers(second, first);

    let Ok(file) = unit::UnitFile::parse(text) else {
        return;
    };
    let normalized = file.normalized();
    assert_eq!(
        file.hash(),
        normalized.hash(),
        "normalizing changed the hash"
    );
    if file.check_representable().is_ok() {
        let again = unit::UnitFile::parse(&file.serialize());
        assert_eq!(
            again.as_ref(),
            Ok(&normalized),
            "serialize did not round-trip"
        );
    }
    for name in [first, "a.service", "web@8080.service", "web@.service"] {
        let _ = unit::validate_unit(&file, name);
        let (req, _) = unit::Requirements::from_unit_with_warnings(&file, name);
        let _ = req.validate();
        let _ = req.conflicts_with(name);
        let _ = req.replaces_unit(name);
    }
});

//! Hostile unit files: NUL bytes, too many options, repeated sections, specifier bombs. Each is
//! refused by `validate_unit` (what the API answers 400 with), naming the problem.

use unit::{
    validate_unit, InvalidUnit, UnitFile, UnitOption, MAX_EXPANDED_VALUE_BYTES, MAX_OPTIONS,
    MAX_REQUIREMENT_VALUES,
};

fn file(options: Vec<UnitOption>) -> UnitFile {
    UnitFile::from_options(options)
}

#[test]
fn nul_bytes_are_refused_in_section_name_and_value() {
    for o in [
        UnitOption::new("Service", "ExecStart", "/bin/true\0rm -rf /"),
        UnitOption::new("Service", "Exec\0Start", "/bin/true"),
        UnitOption::new("Serv\0ice", "ExecStart", "/bin/true"),
    ] {
        let err = validate_unit(&file(vec![o.clone()]), "a.service").unwrap_err();
        assert!(
            matches!(err, InvalidUnit::Unrepresentable(_)) && err.to_string().contains("NUL"),
            "{o:?}: {err}"
        );
    }
}

#[test]
fn more_options_than_the_limit_are_refused_before_any_other_work() {
    let at_limit: Vec<UnitOption> = (0..MAX_OPTIONS)
        .map(|i| UnitOption::new("Service", format!("X{i}"), "v"))
        .collect();
    validate_unit(&file(at_limit.clone()), "a.service").expect("the limit itself is allowed");
    let mut over = at_limit;
    over.push(UnitOption::new("Service", "One", "more"));
    let err = validate_unit(&file(over), "a.service").unwrap_err();
    assert_eq!(err, InvalidUnit::TooManyOptions(MAX_OPTIONS + 1));
    assert!(err.to_string().contains("too many options"), "{err}");
}

#[test]
fn sections_repeated_thousands_of_times_merge_in_first_seen_order() {
    // Alternating sections: grouped in one pass (this was quadratic in the number of options).
    let options: Vec<UnitOption> = (0..MAX_OPTIONS)
        .map(|i| {
            let section = if i % 2 == 0 { "Unit" } else { "Service" };
            UnitOption::new(section, format!("K{i}"), "v")
        })
        .collect();
    let f = file(options);
    let text = f.serialize();
    assert_eq!(text.matches("[Unit]").count(), 1);
    assert_eq!(text.matches("[Service]").count(), 1);
    assert!(text.starts_with("[Unit]\nK0=v\nK2=v\n"), "{}", &text[..40]);
    let normalized = f.normalized();
    assert_eq!(normalized.options[MAX_OPTIONS / 2].name, "K1");
    assert_eq!(UnitFile::parse(&text).unwrap(), normalized);
    validate_unit(&f, "a.service").expect("repeated sections are valid");
    // Section headers repeated in the text: merged the same way.
    let repeated = "[Unit]\nA=1\n[Service]\nB=2\n".repeat(2_000);
    let parsed = UnitFile::parse(&repeated).unwrap();
    assert_eq!(parsed.options.len(), 4_000);
    assert_eq!(parsed.serialize().matches('[').count(), 2);
}

#[test]
fn a_section_name_cannot_smuggle_another_section_or_option() {
    let err = validate_unit(
        &file(vec![UnitOption::new(
            "Service]\nExecStartPre=/bin/evil\n[Service",
            "ExecStart",
            "/bin/true",
        )]),
        "a.service",
    )
    .unwrap_err();
    assert!(err.to_string().contains("contains \"]\""), "{err}");
}

#[test]
fn too_many_x_fleet_values_are_refused() {
    // One line of many quoted values counts value by value.
    let many = vec!["\"m\""; MAX_REQUIREMENT_VALUES / 2 + 1].join(" ");
    let options = vec![
        UnitOption::new("X-Fleet", "MachineOf", many.clone()),
        UnitOption::new("X-Fleet", "Conflicts", many),
    ];
    let err = validate_unit(&file(options), "a.service").unwrap_err();
    assert!(
        matches!(err, InvalidUnit::TooManyRequirementValues(n) if n == MAX_REQUIREMENT_VALUES + 1),
        "{err}"
    );
}

#[test]
fn specifiers_cannot_expand_past_the_bound() {
    let name = format!("{}@{}.service", "p".repeat(100), "i".repeat(140));
    // 1,000 `%n` on a 252-byte name would be 252 KB.
    let bomb = "%n".repeat(1_000);
    let err = validate_unit(
        &file(vec![UnitOption::new("X-Fleet", "MachineOf", bomb)]),
        &name,
    )
    .unwrap_err();
    match &err {
        InvalidUnit::ExpansionTooLong { name, bytes } => {
            assert_eq!(name, "MachineOf");
            assert!(*bytes > MAX_EXPANDED_VALUE_BYTES);
        }
        other => panic!("want ExpansionTooLong, got {other}"),
    }
    assert!(err.to_string().contains("expands to"), "{err}");
    // A few specifiers are what units use.
    validate_unit(
        &file(vec![UnitOption::new(
            "X-Fleet",
            "MachineOf",
            "web@%i.service",
        )]),
        &name,
    )
    .expect("one specifier");
}

#[test]
fn expansion_is_one_pass_per_specifier_never_of_its_own_output() {
    // `%%n` on a name starting with `N` gives `%N...` after the first step, which fleet's next
    // step expanded once; nothing loops.
    assert_eq!(
        unit::expand_specifiers("%%n", "Nx.service"),
        "Nxx.service".to_string()
    );
    // A value that is nothing but specifiers expands once.
    assert_eq!(
        unit::expand_specifiers("%n%N%p%i", "a@b.service"),
        "a@b.servicea@bab"
    );
}

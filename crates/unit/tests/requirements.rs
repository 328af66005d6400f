//! `[X-Fleet]` requirements: fleet's `job/job.go` semantics and the API's `ValidateOptions`.

use std::collections::{BTreeMap, BTreeSet};
use unit::{
    expand_specifiers, is_truthy, metadata_matches, parse_multivalue, validate_unit, InvalidUnit,
    Requirements, RequirementsWarning, UnitFile,
};

fn fleet(body: &str) -> UnitFile {
    let text = format!("[Service]\nExecStart=/bin/true\n\n[X-Fleet]\n{body}");
    UnitFile::parse(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn req(body: &str, name: &str) -> Requirements {
    Requirements::from_unit(&fleet(body), name)
}

fn metadata(pairs: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
    pairs
        .iter()
        .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
        .collect()
}

#[test]
fn multivalue_lines_as_fleet_parsed_them() {
    // fleet's TestParseMultivalueLine, quirks included.
    let table: &[(&str, &[&str])] = &[
        (r#""bar" "ping" "pong""#, &["bar", "ping", "pong"]),
        (r#""bar""#, &["bar"]),
        ("", &[""]),
        (r#""""#, &[""]),
        (r#""bar"#, &[r#""bar"#]),
        (r#"bar""#, &[r#"bar""#]),
        (r#"foo\"bar"#, &[r#"foo\"bar"#]),
        (r#""bar" ""#, &["bar", ""]),
        (r#""foo\"bar""#, &[r#"foo\bar"#]),
        (r#""a" "b c""#, &["a", "b c"]),
        ("a b", &["a b"]),
    ];
    for (line, want) in table {
        assert_eq!(parse_multivalue(line), *want, "{line:?}");
    }
}

#[test]
fn specifiers() {
    let table = [
        ("%n", "foo@bar.service", "foo@bar.service"),
        ("%N", "foo@bar.service", "foo@bar"),
        ("%p", "foo@bar.service", "foo"),
        ("%i", "foo@bar.service", "bar"),
        ("x-%p-%i.%n", "foo@bar.service", "x-foo-bar.foo@bar.service"),
        ("%p %i", "foo.service", "foo "),
        ("%N", "foo.service", "foo"),
        ("%%i", "a@b.service", "%b"),
        ("%x", "a@b.service", "%x"),
        // No `.`: fleet's NewUnitNameInfo returned nil and nothing was expanded.
        ("%i", "", "%i"),
        ("%n", "noname", "%n"),
        // Sequential replacement, as fleet did: text produced by %n is expanded again by %p.
        ("%n", "a%p@b.service", "aa%p@b.service"),
    ];
    for (value, name, want) in table {
        assert_eq!(
            expand_specifiers(value, name),
            want,
            "{value:?} for {name:?}"
        );
    }
}

#[test]
fn truthiness() {
    for v in [
        "true", "TRUE", "True", "yes", "Yes", "1", "on", "ON", "t", "T",
    ] {
        assert!(is_truthy(v), "{v}");
    }
    for v in [
        "false", "no", "0", "off", "f", "", "y", "2", " true", "truee",
    ] {
        assert!(!is_truthy(v), "{v}");
    }
}

#[test]
fn empty_and_absent() {
    assert_eq!(req("", "a.service"), Requirements::default());
    let file = UnitFile::parse("[Service]\nExecStart=/bin/true\n").expect("parse");
    assert_eq!(
        Requirements::from_unit(&file, "a.service"),
        Requirements::default()
    );
    // Keys of other sections are not requirements.
    let file = UnitFile::parse("[Unit]\nGlobal=true\nConflicts=x.service\n").expect("parse");
    assert_eq!(
        Requirements::from_unit(&file, "a.service"),
        Requirements::default()
    );
}

#[test]
fn machine_id_precedence() {
    let table = [
        ("MachineID=abc\n", Some("abc")),
        ("X-ConditionMachineID=old\n", Some("old")),
        ("X-ConditionMachineBootID=boot\n", Some("boot")),
        (
            "X-ConditionMachineBootID=boot\nX-ConditionMachineID=old\nMachineID=new\n",
            Some("new"),
        ),
        (
            "X-ConditionMachineBootID=boot\nX-ConditionMachineID=old\n",
            Some("old"),
        ),
        ("MachineID=first\nMachineID=second\n", Some("first")),
        ("MachineID=\"q1\" \"q2\"\n", Some("q1")),
        ("MachineID=%i\n", Some("c0ffee")),
        // fleet kept an empty MachineID as a requirement no machine satisfies.
        ("MachineID=\n", Some("")),
        ("Global=true\n", None),
    ];
    for (body, want) in table {
        assert_eq!(
            req(body, "pin@c0ffee.service").machine_id.as_deref(),
            want,
            "{body:?}"
        );
    }
}

#[test]
fn machine_of_conflicts_replaces() {
    let r = req(
        "X-ConditionMachineOf=legacy.service\nMachineOf=web@%i.service\nMachineOf=\"a.service\" \"b c.service\"\n",
        "side@1.service",
    );
    assert_eq!(
        r.machine_of,
        [
            "legacy.service",
            "web@1.service",
            "a.service",
            "b c.service"
        ]
    );

    // Conflicts are split on whitespace, legacy key first; MachineOf and Replaces are not split.
    let r = req(
        "Conflicts=conflict.2.service conflict.1.service\nX-Conflicts=old.*\nConflicts=\"%p.*\"\n",
        "conflict.0.service",
    );
    assert_eq!(
        r.conflicts,
        [
            "old.*",
            "conflict.2.service",
            "conflict.1.service",
            "conflict.0.*"
        ]
    );
    let r = req(
        "MachineOf=a.service b.service\nReplaces=x.service y.service\n",
        "u.service",
    );
    assert_eq!(r.machine_of, ["a.service b.service"]);
    assert_eq!(r.replaces, ["x.service y.service"]);
    let r = req(
        "Replaces=replace.0.service\nReplaces=%p-old.service\n",
        "web.service",
    );
    assert_eq!(r.replaces, ["replace.0.service", "web-old.service"]);
    assert!(r.replaces_unit("web-old.service"));
    assert!(!r.replaces_unit("web.service"));

    let r = req("Conflicts=web@*.service\n", "web@1.service");
    assert!(r.conflicts_with("web@2.service"));
    assert!(!r.conflicts_with("web.service"));
}

#[test]
fn machine_metadata_sets_and_malformed_values() {
    let file = fleet(
        "MachineMetadata=region=east\nMachineMetadata=region=west\nX-ConditionMachineMetadata=disk=ssd\n\
         MachineMetadata=\"a=1\" \"b=2\"\nMachineMetadata=hostname=%i\nMachineMetadata=bad\n\
         MachineMetadata=k=v=w\nMachineMetadata==v\nMachineMetadata=k=\n",
    );
    let (r, warnings) = Requirements::from_unit_with_warnings(&file, "metadata@host1.service");
    assert_eq!(
        r.machine_metadata,
        metadata(&[
            ("a", &["1"]),
            ("b", &["2"]),
            ("disk", &["ssd"]),
            ("hostname", &["host1"]),
            ("region", &["east", "west"]),
        ])
    );
    assert_eq!(
        warnings,
        ["bad", "k=v=w", "=v", "k="].map(|v| RequirementsWarning::MalformedMetadata(v.to_string()))
    );
    assert!(warnings[1].to_string().contains("\"k=v=w\""));
    assert_eq!(r, Requirements::from_unit(&file, "metadata@host1.service"));
}

#[test]
fn machine_metadata_is_or_within_a_key_and_across_keys() {
    let machine: BTreeMap<String, String> = [("region", "east"), ("disk", "ssd")]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
    type Required = &'static [(&'static str, &'static [&'static str])];
    let table: &[(Required, bool)] = &[
        (&[], true),
        (&[("region", &["east"])], true),
        (&[("region", &["west", "east"])], true),
        (&[("region", &["west"])], false),
        (&[("region", &["east"]), ("disk", &["ssd"])], true),
        (&[("region", &["east"]), ("disk", &["hdd"])], false),
        (&[("rack", &["1"])], false),
    ];
    for &(required, matches) in table {
        assert_eq!(
            metadata_matches(&metadata(required), &machine),
            matches,
            "{required:?}"
        );
    }
}

#[test]
fn global_last_value_wins() {
    let table = [
        ("Global=true\n", true),
        ("Global=yes\n", true),
        ("Global=On\n", true),
        ("Global=false\n", false),
        ("Global=true\nGlobal=false\n", false),
        ("Global=false\nGlobal=T\n", true),
        ("Global=\"false\" \"1\"\n", true),
        ("Global=\n", false),
        ("", false),
    ];
    for (body, want) in table {
        assert_eq!(req(body, "g.service").global, want, "{body:?}");
    }
}

#[test]
fn unknown_keys_are_collected_once() {
    let file = fleet("MachineMetaData=a=b\nGlobal=true\nFoo=1\nMachineMetaData=c=d\n");
    let (r, warnings) = Requirements::from_unit_with_warnings(&file, "x.service");
    assert_eq!(r.unknown, ["MachineMetaData", "Foo"]);
    assert!(r.machine_metadata.is_empty());
    assert_eq!(
        warnings,
        ["MachineMetaData", "Foo"].map(|k| RequirementsWarning::UnknownOption(k.to_string()))
    );
    assert!(warnings[0].to_string().contains("\"MachineMetaData\""));
}

#[test]
fn forbidden_combinations_name_both_options() {
    // (body, Some((a, b)) if forbidden)
    let table: &[(&str, Option<(&str, &str)>)] = &[
        (
            "MachineID=abc\nMachineOf=a.service\n",
            Some(("MachineID", "MachineOf")),
        ),
        (
            "MachineID=abc\nConflicts=a*\n",
            Some(("MachineID", "Conflicts")),
        ),
        (
            "MachineID=abc\nGlobal=true\n",
            Some(("MachineID", "Global")),
        ),
        (
            "MachineID=abc\nReplaces=a.service\n",
            Some(("MachineID", "Replaces")),
        ),
        (
            "Global=true\nMachineOf=a.service\n",
            Some(("Global", "MachineOf")),
        ),
        (
            "Global=true\nReplaces=a.service\n",
            Some(("Global", "Replaces")),
        ),
        (
            "Conflicts=a*\nReplaces=b.service\n",
            Some(("Conflicts", "Replaces")),
        ),
        (
            "X-ConditionMachineID=abc\nX-ConditionMachineOf=a.service\n",
            Some(("MachineID", "MachineOf")),
        ),
        (
            "X-ConditionMachineBootID=abc\nX-Conflicts=a*\n",
            Some(("MachineID", "Conflicts")),
        ),
        // Allowed.
        ("Global=true\nMachineMetadata=a=b\nConflicts=g.*\n", None),
        ("Global=false\nMachineID=abc\n", None),
        ("MachineID=abc\nMachineMetadata=a=b\n", None),
        ("MachineOf=a.service\nConflicts=b*\n", None),
        ("MachineOf=a.service\nReplaces=b.service\n", None),
        ("MachineOf=a.service\nMachineMetadata=r=e\n", None),
        ("", None),
    ];
    for (body, want) in table {
        let got = req(body, "u.service").validate();
        match want {
            None => assert_eq!(got, Ok(()), "{body:?}"),
            Some((a, b)) => {
                let e = got.expect_err(body).0;
                assert!(
                    e.starts_with(&format!("{a} cannot be used with {b}")),
                    "{body:?}: {e}"
                );
            }
        }
    }
}

#[test]
fn validate_unit_like_fleet_validate_options() {
    let ok = validate_unit(
        &fleet("MachineOf=web@%i.service\n"),
        "web-discovery@1.service",
    )
    .expect("valid");
    assert_eq!(ok.machine_of, ["web@1.service"]);

    // A peer matched by the unit's own Conflicts or Replaces globs can never be satisfied.
    let e = validate_unit(
        &fleet("MachineOf=web@%i.service\nConflicts=web@*.service\n"),
        "x@1.service",
    );
    assert!(
        matches!(&e, Err(InvalidUnit::Requirements(r)) if r.0.contains("\"web@1.service\"")
        && r.0.contains("Conflicts glob \"web@*.service\"")),
        "{e:?}"
    );
    let e = validate_unit(&fleet("MachineOf=a.service\nReplaces=a.*\n"), "x.service");
    assert!(
        matches!(&e, Err(InvalidUnit::Requirements(r)) if r.0.contains("Replaces glob")),
        "{e:?}"
    );
    // Conflicts that do not match the peer are fine.
    assert!(validate_unit(&fleet("MachineOf=a.service\nConflicts=b.*\n"), "x.service").is_ok());

    // Forbidden combinations.
    let e =
        validate_unit(&fleet("Global=true\nMachineID=abc\n"), "x.service").expect_err("forbidden");
    assert!(
        e.to_string()
            .contains("MachineID cannot be used with Global"),
        "{e}"
    );

    // Options from the API that do not survive normalization (a line too long for systemd).
    let long = UnitFile::from_options(vec![unit::UnitOption::new(
        "Service",
        "ExecStart",
        "x".repeat(unit::LINE_MAX),
    )]);
    let e = validate_unit(&long, "x.service").expect_err("too long");
    assert!(
        matches!(&e, InvalidUnit::Parse(p) if p.message.contains("line too long") && p.line == 2),
        "{e}"
    );
    let bad_name =
        UnitFile::from_options(vec![unit::UnitOption::new("Service", "Exec\nStart", "x")]);
    assert!(matches!(
        validate_unit(&bad_name, "x.service"),
        Err(InvalidUnit::Parse(_))
    ));

    // Options fleet accepted but stored changed are refused, with the reason.
    for value in ["echo \\", "a\n", " padded"] {
        let file =
            UnitFile::from_options(vec![unit::UnitOption::new("Service", "ExecStart", value)]);
        let e = validate_unit(&file, "x.service").expect_err(value);
        assert!(
            matches!(&e, InvalidUnit::Unrepresentable(m) if m.contains("ExecStart")),
            "{value:?}: {e}"
        );
    }
    // Such a value also comes from a file line ending in a backslash plus whitespace.
    let parsed = UnitFile::parse("[Service]\nExecStart=echo \\ \nUser=core\n").expect("parse");
    assert_eq!(
        parsed.values("Service", "ExecStart").collect::<Vec<_>>(),
        ["echo \\"]
    );
    assert!(matches!(
        validate_unit(&parsed, "x.service"),
        Err(InvalidUnit::Unrepresentable(_))
    ));

    // Unknown keys are not the API's business.
    assert!(validate_unit(&fleet("Bogus=1\n"), "x.service").is_ok());
}

//! Unit names: fleet's `ValidateName`, `NewUnitNameInfo` and fleetctl's `unitNameMangle`.

use unit::{is_recognized_type, is_template, mangle, UnitName};

/// (name, prefix, instance, suffix, is_template, is_instance, template)
type NameRow = (
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
    bool,
    bool,
    &'static str,
);

#[test]
fn valid_names_split_like_fleet() {
    // (name, prefix, instance, suffix, is_template, is_instance, template) — fleet's TestNamedUnit.
    let table: &[NameRow] = &[
        (
            "foo.service",
            "foo",
            None,
            "service",
            false,
            false,
            "foo@.service",
        ),
        (
            "foo@.service",
            "foo",
            Some(""),
            "service",
            true,
            false,
            "foo@.service",
        ),
        (
            "foo@bar.service",
            "foo",
            Some("bar"),
            "service",
            false,
            true,
            "foo@.service",
        ),
        (
            "foo@bar@baz.service",
            "foo",
            Some("bar@baz"),
            "service",
            false,
            true,
            "foo@.service",
        ),
        (
            "foo.1@.service",
            "foo.1",
            Some(""),
            "service",
            true,
            false,
            "foo.1@.service",
        ),
        (
            "foo.1@2.service",
            "foo.1",
            Some("2"),
            "service",
            false,
            true,
            "foo.1@.service",
        ),
        (
            "ssh@.socket",
            "ssh",
            Some(""),
            "socket",
            true,
            false,
            "ssh@.socket",
        ),
        (
            "ssh@1.socket",
            "ssh",
            Some("1"),
            "socket",
            false,
            true,
            "ssh@.socket",
        ),
        (
            "a:b-c_d.e\\x2d.mount",
            "a:b-c_d.e\\x2d",
            None,
            "mount",
            false,
            false,
            "a:b-c_d.e\\x2d@.mount",
        ),
        (
            "web@10.0.0.1:80.service",
            "web",
            Some("10.0.0.1:80"),
            "service",
            false,
            true,
            "web@.service",
        ),
        ("x.target", "x", None, "target", false, false, "x@.target"),
    ];
    for &(full, prefix, instance, suffix, is_template, is_instance, template) in table {
        let name = UnitName::parse(full).unwrap_or_else(|e| panic!("{full}: {e}"));
        assert_eq!(name.full, full);
        assert_eq!(name.prefix, prefix, "{full}");
        assert_eq!(name.instance.as_deref(), instance, "{full}");
        assert_eq!(name.suffix, suffix, "{full}");
        assert_eq!(name.is_template(), is_template, "{full}");
        assert_eq!(name.is_instance(), is_instance, "{full}");
        if is_template || is_instance {
            assert_eq!(name.template(), template, "{full}");
        }
        assert_eq!(format!("{}.{}", name.stem(), name.suffix), full);
        assert_eq!(name.to_string(), full);
    }
    let tmpl = UnitName::parse("hello@.service").expect("template");
    assert_eq!(tmpl.instance_name("1"), "hello@1.service");
}

#[test]
fn every_api_unit_type_is_accepted() {
    for t in unit::name::VALID_UNIT_TYPES {
        assert!(UnitName::parse(&format!("foo.{t}")).is_ok(), "{t}");
    }
    for t in unit::name::TEMPLATE_UNIT_TYPES {
        assert!(UnitName::parse(&format!("foo@1.{t}")).is_ok(), "{t}");
    }
}

#[test]
fn invalid_names_say_why() {
    let at_max = format!("{}.service", "a".repeat(256 - ".service".len()));
    assert!(UnitName::parse(&at_max).is_ok());
    let too_long = format!("{}.service", "a".repeat(257 - ".service".len()));
    // (name, a word the reason must contain)
    let table: &[(&str, &str)] = &[
        ("", "empty"),
        (&too_long, "maximum is 256"),
        ("foo", "no \".\""),
        ("foo.", "end in \".\""),
        ("foo.link", "unknown unit type \"link\""),
        ("foo.Service", "unknown unit type"),
        ("foo@bar.mount", "cannot be templates"),
        ("foo@.slice", "cannot be templates"),
        ("foo bar.service", "invalid character ' '"),
        ("foo/bar.service", "invalid character '/'"),
        ("föo.service", "invalid character 'ö'"),
        ("foo%i.service", "invalid character '%'"),
        ("@foo.service", "start with \"@\""),
        ("@.service", "start with \"@\""),
    ];
    for &(name, why) in table {
        let e = UnitName::parse(name).expect_err(name);
        assert_eq!(e.name, name);
        assert!(e.reason.contains(why), "{name:?}: {e}");
        assert!(e.to_string().contains(&format!("{name:?}")), "{e}");
    }
}

#[test]
fn mangling_table() {
    let table = [
        ("hello", "hello.service"),
        ("hello.service", "hello.service"),
        ("hello@.service", "hello@.service"),
        ("hello@1", "hello@1.service"),
        ("foo.socket", "foo.socket"),
        ("foo.timer", "foo.timer"),
        ("foo.path", "foo.path"),
        ("foo.device", "foo.device"),
        ("foo.mount", "foo.mount"),
        ("foo.automount", "foo.automount"),
        ("foo.target", "foo.target.service"),
        ("foo.slice", "foo.slice.service"),
        ("foo.link", "foo.link.service"),
        ("units/hello.service", "hello.service"),
        ("/abs/path/to/web@.service", "web@.service"),
        ("dir/hello/", "hello.service"),
        ("./hello", "hello.service"),
        ("", "..service"),
        ("/", "/.service"),
    ];
    for (arg, want) in table {
        assert_eq!(mangle(arg), want, "mangle({arg:?})");
    }
}

#[test]
fn recognized_types() {
    for t in [
        "service",
        "socket",
        "timer",
        "path",
        "device",
        "mount",
        "automount",
    ] {
        assert!(is_recognized_type(t), "{t}");
    }
    for t in [
        "swap", "target", "snapshot", "network", "netdev", "link", "unknown", "", ".service",
    ] {
        assert!(!is_recognized_type(t), "{t}");
    }
    assert!(UnitName::parse("a.socket")
        .expect("valid")
        .is_recognized_type());
    assert!(!UnitName::parse("a.target")
        .expect("valid")
        .is_recognized_type());
}

#[test]
fn templates_are_told_by_name_alone() {
    assert!(is_template("foo@.service"));
    assert!(!is_template("foo@1.service"));
    assert!(!is_template("foo.service"));
    // The scheduler asks of names it does not validate again.
    assert!(is_template("foo@"));
}

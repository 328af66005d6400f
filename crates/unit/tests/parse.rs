//! Golden cases for the parser, serializer and hash: fleet's `unit/unit_test.go` vectors and the
//! corners of go-systemd's lexer.

use unit::{UnitFile, UnitOption, LINE_MAX};

fn opts(file: &UnitFile) -> Vec<(&str, &str, &str)> {
    file.options
        .iter()
        .map(|o| (o.section.as_str(), o.name.as_str(), o.value.as_str()))
        .collect()
}

fn parse(text: &str) -> UnitFile {
    match UnitFile::parse(text) {
        Ok(f) => f,
        Err(e) => panic!("parse of {text:?} failed: {e}"),
    }
}

fn parse_err(text: &str) -> unit::ParseError {
    match UnitFile::parse(text) {
        Ok(f) => panic!("parse of {text:?} succeeded unexpectedly: {f:?}"),
        Err(e) => e,
    }
}

#[test]
fn hash_vector_from_fleet() {
    let file = parse("[Service]\nExecStart=/bin/sleep 100\n");
    let hash = file.hash();
    assert_eq!(hash.to_string(), "1c6fb6f3684bafb0c173d8b8b957ceff031180c1");
    assert_eq!(hash.short(), "1c6fb6f");
    assert_eq!(hash.to_string().parse::<unit::UnitHash>(), Ok(hash));
}

#[test]
fn hash_ignores_comments_and_whitespace_but_not_order() {
    let a = parse("[Service]\nExecStart=/bin/sleep 100\nUser=core\n");
    let b = parse(
        "# leading comment\n[Service]\n; c\n  ExecStart =  /bin/sleep 100  \n\n\nUser= core\n",
    );
    let c = parse("[Service]\nUser=core\nExecStart=/bin/sleep 100\n");
    assert_eq!(a.hash(), b.hash());
    assert_ne!(a.hash(), c.hash());
}

#[test]
fn deserialize_vector_from_fleet() {
    let file = parse(
        "\nThis=Ignored\n[Unit]\n;ignore this guy\nDescription = Foo\n\n[Service]\nExecStart=echo \"ping\";\n\
         ExecStop=echo \"pong\"\n# ignore me, too\nExecStop=echo post\n\n[X-Fleet]\nMachineMetadata=foo=bar\n\
         MachineMetadata=baz=qux\n",
    );
    assert_eq!(
        opts(&file),
        [
            ("Unit", "Description", "Foo"),
            ("Service", "ExecStart", "echo \"ping\";"),
            ("Service", "ExecStop", "echo \"pong\""),
            ("Service", "ExecStop", "echo post"),
            ("X-Fleet", "MachineMetadata", "foo=bar"),
            ("X-Fleet", "MachineMetadata", "baz=qux"),
        ]
    );
    assert_eq!(file.description(), Some("Foo"));
}

#[test]
fn garbage_names_pass_through() {
    let file = parse(
        "\n>>>>>>>>>>>>>\n[Service]\nExecStart=jim\n\
         # As long as a line has an equals sign, systemd is happy, so we should pass it through\n\
         <<<<<<<<<<<=bar\n",
    );
    assert_eq!(
        opts(&file),
        [
            ("Service", "ExecStart", "jim"),
            ("Service", "<<<<<<<<<<<", "bar")
        ]
    );
}

#[test]
fn escaped_multilines_keep_backslash_and_newline() {
    let file = parse(
        "\n[Service]\nExecStart=echo \\\n  \"pi\\\n  ng\"\nExecStop=\\\necho \"po\\\nng\"\n\
         # comments within continuation should not be ignored\nExecStopPre=echo\\\n#pang\n\
         ExecStopPost=echo\\\n#peng\\\npung\n",
    );
    assert_eq!(
        opts(&file),
        [
            ("Service", "ExecStart", "echo \\\n  \"pi\\\n  ng\""),
            ("Service", "ExecStop", "\\\necho \"po\\\nng\""),
            ("Service", "ExecStopPre", "echo\\\n#pang"),
            ("Service", "ExecStopPost", "echo\\\n#peng\\\npung"),
        ]
    );
    // The normalized form writes the continuation back verbatim, so it survives a round trip.
    assert_eq!(parse(&file.serialize()), file);
}

#[test]
fn continuation_ended_by_blank_line_or_eof() {
    // A blank line ends a continuation; the newline after the backslash stays in the value.
    let file = parse("[Service]\nExecStart=a\\\n\nUser=x\n");
    assert_eq!(
        opts(&file),
        [("Service", "ExecStart", "a\\\n"), ("Service", "User", "x")]
    );
    assert_eq!(file.serialize(), "[Service]\nExecStart=a\\\n\nUser=x\n");
    assert_eq!(parse(&file.serialize()), file);
    // Without one too (go-systemd dropped it here, giving a value its own serialization did not
    // reproduce): a missing final newline changes nothing.
    assert_eq!(
        opts(&parse("[Service]\nExecStart=a\\")),
        [("Service", "ExecStart", "a\\\n")]
    );
    assert_eq!(opts(&parse("[S]\nA=a\\\nb\\")), [("S", "A", "a\\\nb\\\n")]);
    // With a final newline, the newline is kept.
    assert_eq!(
        opts(&parse("[Service]\nExecStart=a\\\n")),
        [("Service", "ExecStart", "a\\\n")]
    );
    // A whitespace-only line ends it too.
    assert_eq!(
        opts(&parse("[S]\nA=1\\\n   \nB=2\n")),
        [("S", "A", "1\\\n"), ("S", "B", "2")]
    );
}

#[test]
fn comment_continuation() {
    let file = parse(
        "[Service]\n# comment \\\nExecStart=hidden\nUser=seen\n; other \\ \nHidden=too\nA=b\n",
    );
    assert_eq!(
        opts(&file),
        [("Service", "User", "seen"), ("Service", "A", "b")]
    );
    // Before the first section as well.
    let file = parse("# x\\\n[NotASection]\n[Real]\nA=1\n");
    assert_eq!(opts(&file), [("Real", "A", "1")]);
}

#[test]
fn whitespace_trimming_and_empty_values() {
    let file = parse("[Unit]\n   Description   =   Foo Bar   \n\tAfter=\t\nEmpty=\n=nameless\n");
    assert_eq!(
        opts(&file),
        [
            ("Unit", "Description", "Foo Bar"),
            ("Unit", "After", ""),
            ("Unit", "Empty", ""),
            ("Unit", "", "nameless"),
        ]
    );
    // Everything after the first `=` is the value.
    assert_eq!(
        opts(&parse("[X-Fleet]\nMachineMetadata=a=b=c\n")),
        [("X-Fleet", "MachineMetadata", "a=b=c")]
    );
}

#[test]
fn duplicate_keys_and_sections() {
    let file = parse("[Service]\nExecStartPre=a\n[Unit]\nDescription=d\n[Service]\nExecStartPre=b\nExecStart=c\n");
    assert_eq!(
        opts(&file),
        [
            ("Service", "ExecStartPre", "a"),
            ("Unit", "Description", "d"),
            ("Service", "ExecStartPre", "b"),
            ("Service", "ExecStart", "c"),
        ]
    );
    assert_eq!(
        file.values("Service", "ExecStartPre").collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(
        file.serialize(),
        "[Service]\nExecStartPre=a\nExecStartPre=b\nExecStart=c\n\n[Unit]\nDescription=d\n"
    );
    // Serialization groups sections; `normalized` gives that order without text.
    assert_eq!(
        opts(&file.normalized()),
        [
            ("Service", "ExecStartPre", "a"),
            ("Service", "ExecStartPre", "b"),
            ("Service", "ExecStart", "c"),
            ("Unit", "Description", "d"),
        ]
    );
    assert_eq!(parse(&file.serialize()), file.normalized());
    assert_eq!(file.normalized().hash(), file.hash());
}

#[test]
fn lines_before_first_section_are_ignored() {
    assert_eq!(
        opts(&parse("This=Ignored\nno equals here\n[Unit]\nA=1\n")),
        [("Unit", "A", "1")]
    );
    assert_eq!(parse("This=Ignored\n").options, []);
    assert_eq!(parse("").options, []);
    // As in go-systemd, a `[` anywhere before the first section starts one.
    assert_eq!(opts(&parse("junk [Unit]\nA=1\n")), [("Unit", "A", "1")]);
}

#[test]
fn section_headers() {
    assert_eq!(opts(&parse("[Unit]   \nA=1\n")), [("Unit", "A", "1")]);
    assert_eq!(
        opts(&parse("  [Unit]\n  [X-Fleet]\nGlobal=true\n")),
        [("X-Fleet", "Global", "true")]
    );
    assert_eq!(opts(&parse("[Unit]\r\nA=1\r\n")), [("Unit", "A", "1")]);
    let e = parse_err("[Unit]\nA=1\n[Service] junk\nB=2\n");
    assert_eq!(e.line, 3);
    assert!(
        e.message.contains("garbage after section name [Service]"),
        "{e}"
    );
    let e = parse_err("[Unit]\nA=1\n[Service\n");
    assert_eq!(e.line, 3);
    assert!(e.message.contains("end of section"), "{e}");
}

#[test]
fn bad_units_fail_with_line_numbers() {
    // fleet's TestBadUnitsFail.
    let e = parse_err("\n[Unit]\n\n[Service]\n<<<<<<<<<<<<<<<<\n");
    assert_eq!(e.line, 5);
    let e = parse_err("\n[Unit]\nnonsense upon stilts\n");
    assert_eq!(e.line, 3);
    assert!(
        e.message.contains("nonsense upon stilts") && e.message.contains('='),
        "{e}"
    );
    assert_eq!(e.to_string(), format!("line 3: {}", e.message));
    // An option name running into end of input.
    assert_eq!(parse_err("[Unit]\nA=1\nDescription").line, 3);
    // A carriage return inside the name.
    assert_eq!(parse_err("[Unit]\nA\r=1\n").line, 2);
}

#[test]
fn line_length_limit() {
    let ok = format!(
        "[Service]\nExecStart={}\n",
        "x".repeat(LINE_MAX - 1 - "ExecStart=".len())
    );
    assert!(UnitFile::parse(&ok).is_ok());
    let long = format!(
        "[Service]\nA=1\nExecStart={}\nB=2\n",
        "x".repeat(LINE_MAX - "ExecStart=".len())
    );
    let e = parse_err(&long);
    assert_eq!(e.line, 3);
    assert!(e.message.contains("line too long"), "{e}");
    // Also at the end of input without a newline, and on continuation lines.
    let e = parse_err(&format!("[S]\nA={}", "y".repeat(LINE_MAX)));
    assert_eq!(e.line, 2);
    let e = parse_err(&format!("[S]\nA=b\\\n{}\n", "y".repeat(LINE_MAX)));
    assert_eq!(e.line, 3);
    // And before the first section.
    assert_eq!(
        parse_err(&format!("{}\n[S]\n", "z".repeat(LINE_MAX))).line,
        1
    );
}

#[test]
fn serialize_normal_form() {
    let file = UnitFile::from_options(vec![
        UnitOption::new("Unit", "Description", "Foo"),
        UnitOption::new("Service", "ExecStart", "/bin/true"),
        UnitOption::new("Unit", "After", "network.target"),
    ]);
    assert_eq!(
        file.serialize(),
        "[Unit]\nDescription=Foo\nAfter=network.target\n\n[Service]\nExecStart=/bin/true\n"
    );
    assert_eq!(UnitFile::default().serialize(), "");
    assert_eq!(file.to_string(), file.serialize());
}

#[test]
fn serialize_deserialize_vector_from_fleet() {
    let file = parse("\n[Unit]\nDescription = Foo\n");
    assert_eq!(file.serialize(), "[Unit]\nDescription=Foo\n");
    assert_eq!(parse(&file.serialize()), file);
}

#[test]
fn representability() {
    let bad = [
        UnitOption::new("A]", "n", "v"),
        UnitOption::new("S", " n", "v"),
        UnitOption::new("S", "n=m", "v"),
        UnitOption::new("S", "#n", "v"),
        UnitOption::new("S", "[n", "v"),
        UnitOption::new("S", "n", " v"),
        UnitOption::new("S", "n", "a\nb"),
        UnitOption::new("S", "n", "a\\"),
        UnitOption::new("S", "n", "a\\\n\n"),
        UnitOption::new("S", "n", "a\\\n\nb"),
        UnitOption::new("S", "n", "x".repeat(LINE_MAX)),
    ];
    for o in bad {
        let file = UnitFile::from_options(vec![o.clone()]);
        assert!(
            file.check_representable().is_err(),
            "{o:?} should not be representable"
        );
        assert_ne!(
            UnitFile::parse(&file.serialize()).ok(),
            Some(file),
            "{o:?} round-tripped"
        );
    }
    let good = [
        UnitOption::new("", "", ""),
        UnitOption::new("A B", "n", "a\\\n  b"),
        UnitOption::new("S", "<<<", "a\\\n"),
        UnitOption::new("S", "n", "a\\\n#b\\\n[c]"),
        UnitOption::new("S", "n#;[", "x\ry"),
    ];
    for o in good {
        let file = UnitFile::from_options(vec![o.clone(), UnitOption::new("T", "k", "v")]);
        assert_eq!(file.check_representable(), Ok(()), "{o:?}");
        assert_eq!(UnitFile::parse(&file.serialize()), Ok(file), "{o:?}");
    }
}

#[test]
fn from_path_names_file_and_line() {
    let dir = TempDir::new("from_path");
    let good = dir.path().join("good.service");
    std::fs::write(&good, "[Service]\nExecStart=/bin/sleep 100\n").expect("write");
    let file = UnitFile::from_path(&good).expect("parse good file");
    assert_eq!(
        file.hash().to_string(),
        "1c6fb6f3684bafb0c173d8b8b957ceff031180c1"
    );

    let bad = dir.path().join("bad.service");
    std::fs::write(&bad, "[Service]\nExecStart=/bin/true\nno equals\n").expect("write");
    let e = UnitFile::from_path(&bad).expect_err("bad file");
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("{}:3: ", bad.display())),
        "{shown}"
    );

    let missing = dir.path().join("missing.service");
    let e = UnitFile::from_path(&missing).expect_err("missing file");
    assert!(
        e.to_string().starts_with(&missing.display().to_string()),
        "{e}"
    );

    let binary = dir.path().join("binary.service");
    std::fs::write(&binary, b"[Service]\nA=\xff\n").expect("write");
    let e = UnitFile::from_path(&binary).expect_err("binary file");
    assert!(
        e.to_string()
            .starts_with(&format!("{}:2: ", binary.display())),
        "{e}"
    );
}

/// A directory removed on drop, even when the test fails.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("fleet-unit-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

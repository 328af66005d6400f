//! Property tests: the normalized form round-trips every representable unit (up to grouping of
//! repeated sections, which serialization merges: see `UnitFile::normalized`), the representability
//! rule is exact, and parsing arbitrary text never panics and yields a normalization fixpoint.
//!
//! What the normalized form can represent (see `UnitFile::check_representable`): section names
//! without `]`; option names that are trimmed, contain no `=`/CR/LF and do not start with `[`,
//! `#` or `;`; values that are trimmed, whose line breaks all follow a `\` (continuations), which
//! do not end in `\` (unless in `\` + LF), and whose lines stay under `LINE_MAX`.

use proptest::prelude::*;
use unit::{UnitFile, UnitOption};

/// Characters chosen to hit the lexer's special cases.
const NASTY: &[char] = &[
    'a', 'Z', '0', ' ', '\t', '=', '[', ']', '#', ';', '\\', '\n', '\r', '"', '%', 'é', '\u{a0}',
];

fn nasty_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(NASTY), 0..max)
        .prop_map(|cs| cs.into_iter().collect())
}

fn section() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Unit".to_string()),
        Just("Service".to_string()),
        Just("X-Fleet".to_string()),
        "[a-zA-Z0-9 _.#;=\\[-]{0,12}",
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-zA-Z0-9<>_.%-]([a-zA-Z0-9 <>#;\\[\\]_.%-]{0,10}[a-zA-Z0-9<>_.%-])?",
    ]
}

fn value() -> impl Strategy<Value = String> {
    let segment = "[a-zA-Z0-9 #;\\[\\]=\"%@.\\\\é]{1,12}";
    (prop::collection::vec(segment, 0..4), any::<bool>()).prop_map(
        |(segments, blank_terminated)| {
            let mut v = segments.join("\\\n");
            if blank_terminated && !v.is_empty() {
                v.push_str("\\\n");
            }
            v
        },
    )
}

fn representable_option() -> impl Strategy<Value = UnitOption> {
    (section(), name(), value())
        .prop_map(|(s, n, v)| UnitOption::new(s, n, v))
        .prop_filter("not representable", |o| {
            UnitFile::from_options(vec![o.clone()])
                .check_representable()
                .is_ok()
        })
}

fn nasty_option() -> impl Strategy<Value = UnitOption> {
    (nasty_string(6), nasty_string(6), nasty_string(10))
        .prop_map(|(s, n, v)| UnitOption::new(s, n, v))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn representable_units_round_trip(options in prop::collection::vec(representable_option(), 0..8)) {
        let file = UnitFile::from_options(options);
        let text = file.serialize();
        prop_assert_eq!(UnitFile::parse(&text), Ok(file.normalized()), "text: {:?}", text);
        prop_assert_eq!(UnitFile::parse(&text).map(|f| f.hash()), Ok(file.hash()));
    }

    #[test]
    fn representability_rule_is_exact(options in prop::collection::vec(nasty_option(), 1..4)) {
        let file = UnitFile::from_options(options);
        let round_trips = UnitFile::parse(&file.serialize()) == Ok(file.normalized());
        prop_assert_eq!(
            file.check_representable().is_ok(),
            round_trips,
            "check says {:?}, text {:?}", file.check_representable(), file.serialize()
        );
    }

    #[test]
    fn parsed_text_is_a_normalization_fixpoint(text in nasty_string(60)) {
        // Never panics; whatever parses re-parses to itself, unless a value line ended in `\`
        // plus whitespace (trimmed to a value ending in `\`, as fleet did).
        if let Ok(file) = UnitFile::parse(&text) {
            if file.options.iter().any(|o| o.value.ends_with('\\')) {
                prop_assert!(file.check_representable().is_err());
                return Ok(());
            }
            prop_assert_eq!(file.check_representable(), Ok(()));
            let normal = file.serialize();
            prop_assert_eq!(UnitFile::parse(&normal), Ok(file.normalized()), "normal: {:?}", normal);
            prop_assert_eq!(file.normalized().normalized(), file.normalized());
        }
    }

    #[test]
    fn parsed_unit_like_text_round_trips(
        lines in prop::collection::vec(
            prop_oneof![
                section().prop_map(|s| format!("[{s}]")),
                (name(), nasty_string(8)).prop_map(|(n, v)| format!("{n}={v}")),
                nasty_string(8),
            ],
            0..12,
        )
    ) {
        let text = lines.join("\n");
        if let Ok(file) = UnitFile::parse(&text) {
            // A missing final newline changes nothing (except after a CR, which go-systemd
            // dropped only at end of input: `\` CR at the end continues, `\` CR LF does not).
            if !text.ends_with('\r') {
                prop_assert_eq!(UnitFile::parse(&format!("{text}\n")), Ok(file.clone()));
            }
            if file.options.iter().any(|o| o.value.ends_with('\\')) {
                return Ok(());
            }
            prop_assert_eq!(UnitFile::parse(&file.serialize()), Ok(file.normalized()));
        }
    }
}

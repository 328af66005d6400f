//! Go's `flag` spellings on clap commands.
//!
//! fleet's daemon and (before cobra) its client parsed their command lines with Go's `flag`
//! package, which takes a long option with one dash as well as two: `fleetd -config=FILE`,
//! `fleetd -version`, `fleetctl -endpoint=URL list-units`. Unit files, scripts and systemd
//! drop-ins written for fleet keep those spellings. clap reads `-config` as a cluster of short
//! options, and has no setting for single-dash long options, so [`single_dash_long`] rewrites
//! the arguments that name a long option of the command to clap's `--` form before clap parses
//! them. Everything else passes through unchanged.
//!
//! ```
//! use clap::{Arg, Command};
//! let cmd = Command::new("fleetd").arg(Arg::new("config").long("config"));
//! let args = fleet_goflags::single_dash_long(&cmd, ["fleetd", "-config=/etc/fleet/fleet.conf"]);
//! let m = cmd.try_get_matches_from(args).unwrap();
//! assert_eq!(m.get_one::<String>("config").unwrap(), "/etc/fleet/fleet.conf");
//! ```

use clap::{Arg, Command};
use std::ffi::OsString;

/// `args` (program name first) with every `-name` / `-name=value` whose `name` is a long option
/// (or long alias) of `cmd`, or of the subcommand named before it, rewritten as `--name...`.
///
/// Names of one letter stay as they are: `-l` is clap's short option already. Rewriting stops at
/// `--` and at the first positional argument of a subcommand whose positionals take the rest of
/// the line verbatim (`fleetctl ssh MACHINE ls -la`: `-la` belongs to the remote command). The
/// value after an option that takes one (`-endpoint URL`) is skipped, so a value that looks like
/// a subcommand name is not taken for one.
pub fn single_dash_long<I, T>(cmd: &Command, args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut root = cmd.clone();
    // After build() the global options are known to every subcommand and num_args is set.
    root.build();
    let mut args = args.into_iter().map(Into::into);
    let mut out: Vec<OsString> = args.by_ref().take(1).collect();
    let mut current: &Command = &root;
    let mut skip_value = false;
    for arg in args.by_ref() {
        if skip_value {
            skip_value = false;
            out.push(arg);
            continue;
        }
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            out.push(arg);
            break;
        }
        if let Some(rest) = text.strip_prefix("--") {
            let (name, value) = split_value(rest);
            skip_value = value.is_none() && find_long(&root, current, name).is_some_and(takes_next);
            out.push(arg);
            continue;
        }
        if let Some(rest) = text.strip_prefix('-') {
            let (name, value) = split_value(rest);
            if name.chars().count() > 1 {
                if let Some(option) = find_long(&root, current, name) {
                    skip_value = value.is_none() && takes_next(option);
                    out.push(format!("-{text}").into());
                    continue;
                }
            }
            out.push(arg);
            continue;
        }
        if let Some(sub) = find_subcommand(current, text) {
            current = sub;
            out.push(arg);
            continue;
        }
        out.push(arg);
        if takes_rest_verbatim(current) {
            break;
        }
    }
    out.extend(args);
    out
}

fn split_value(option: &str) -> (&str, Option<&str>) {
    match option.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (option, None),
    }
}

/// The long option `name` of `current`, or a global one of `root`.
fn find_long<'a>(root: &'a Command, current: &'a Command, name: &str) -> Option<&'a Arg> {
    let named = |a: &&Arg| {
        a.get_long() == Some(name)
            || a.get_all_aliases()
                .is_some_and(|aliases| aliases.contains(&name))
    };
    current.get_arguments().find(named).or_else(|| {
        root.get_arguments()
            .filter(|a| a.is_global_set())
            .find(named)
    })
}

/// Whether `--name value` takes the next argument as the value (Go's `-name value`).
fn takes_next(option: &Arg) -> bool {
    option.get_action().takes_values()
        && !option.is_require_equals_set()
        && option.get_num_args().is_none_or(|n| n.min_values() > 0)
}

/// A subcommand by name, alias or unique prefix. clap does not tell whether a command infers
/// subcommands from prefixes (fleetctl does, as cobra did); taking a prefix where clap will not
/// only means a misspelt subcommand's options are rewritten before clap refuses the line.
fn find_subcommand<'a>(current: &'a Command, text: &str) -> Option<&'a Command> {
    if let Some(sub) = current.find_subcommand(text) {
        return Some(sub);
    }
    let mut prefixed = current
        .get_subcommands()
        .filter(|s| s.get_name().starts_with(text));
    match (prefixed.next(), prefixed.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    }
}

fn takes_rest_verbatim(current: &Command) -> bool {
    current
        .get_arguments()
        .any(|a| a.is_positional() && a.is_trailing_var_arg_set())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ArgAction;

    fn fleetctl_like() -> Command {
        Command::new("fleetctl")
            .infer_subcommands(true)
            .arg(Arg::new("endpoint").long("endpoint").global(true))
            .arg(
                Arg::new("strict-host-key-checking")
                    .long("strict-host-key-checking")
                    .global(true)
                    .num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value("true"),
            )
            .arg(
                Arg::new("ca-file")
                    .long("ca-file")
                    .alias("etcd-cafile")
                    .global(true),
            )
            .subcommand(
                Command::new("list-units")
                    .arg(
                        Arg::new("full")
                            .long("full")
                            .short('l')
                            .action(ArgAction::SetTrue),
                    )
                    .arg(Arg::new("fields").long("fields")),
            )
            .subcommand(
                Command::new("ssh")
                    .arg(Arg::new("machine").long("machine"))
                    .arg(
                        Arg::new("args")
                            .num_args(0..)
                            .trailing_var_arg(true)
                            .allow_hyphen_values(true),
                    ),
            )
    }

    fn rewrite(line: &str) -> String {
        let args = single_dash_long(&fleetctl_like(), line.split(' '));
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn single_dash_long_options_become_double_dash_and_nothing_else_changes() {
        let cases = [
            // Go's spellings, before and after the subcommand.
            (
                "fleetctl -endpoint=unix:///s list-units",
                "fleetctl --endpoint=unix:///s list-units",
            ),
            (
                "fleetctl -endpoint http://h:1 list-units",
                "fleetctl --endpoint http://h:1 list-units",
            ),
            (
                "fleetctl list-units -full -fields=unit",
                "fleetctl list-units --full --fields=unit",
            ),
            (
                "fleetctl -strict-host-key-checking=false list-units",
                "fleetctl --strict-host-key-checking=false list-units",
            ),
            (
                "fleetctl -etcd-cafile=/ca list-units",
                "fleetctl --etcd-cafile=/ca list-units",
            ),
            // Our spellings and short options stay.
            (
                "fleetctl --endpoint=x list-units -l",
                "fleetctl --endpoint=x list-units -l",
            ),
            ("fleetctl list-units --full", "fleetctl list-units --full"),
            // A value that looks like an option or a subcommand is a value.
            (
                "fleetctl -endpoint -full list-units",
                "fleetctl --endpoint -full list-units",
            ),
            (
                "fleetctl --endpoint ssh list-units -full",
                "fleetctl --endpoint ssh list-units --full",
            ),
            // An option of another subcommand, or an unknown name: clap's error, not ours.
            (
                "fleetctl -fields=unit list-units",
                "fleetctl -fields=unit list-units",
            ),
            ("fleetctl list-units -nosuch", "fleetctl list-units -nosuch"),
            // Inferred subcommand prefix.
            ("fleetctl list-u -full", "fleetctl list-u --full"),
            // The remote command of ssh is left alone, and so is everything after `--`.
            (
                "fleetctl ssh -machine=ab ls -endpoint",
                "fleetctl ssh --machine=ab ls -endpoint",
            ),
            (
                "fleetctl list-units -- -full",
                "fleetctl list-units -- -full",
            ),
        ];
        for (given, want) in cases {
            assert_eq!(rewrite(given), want, "for {given:?}");
        }
    }

    #[test]
    fn rewritten_lines_parse_as_their_double_dash_forms() {
        let cmd = fleetctl_like();
        let m = cmd
            .clone()
            .try_get_matches_from(single_dash_long(
                &cmd,
                "fleetctl -endpoint=unix:///s list-units -full".split(' '),
            ))
            .expect("rewritten line parses");
        assert_eq!(
            m.get_one::<String>("endpoint").map(String::as_str),
            Some("unix:///s")
        );
        let (name, sub) = m.subcommand().expect("subcommand");
        assert_eq!(name, "list-units");
        assert!(sub.get_flag("full"));
    }

    #[test]
    fn arguments_that_are_not_utf8_pass_through() {
        use std::os::unix::ffi::OsStringExt;
        let odd = OsString::from_vec(vec![b'-', 0xff, b'x']);
        let out = single_dash_long(
            &fleetctl_like(),
            vec![OsString::from("fleetctl"), odd.clone()],
        );
        assert_eq!(out[1], odd);
    }
}

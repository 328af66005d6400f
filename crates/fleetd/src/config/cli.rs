//! fleetd's command line: `--config`, `--version`, and one flag per option.

use clap::{Arg, ArgAction, ColorChoice, Command};

use super::options::{FlagKind, OPTIONS};
use super::DEFAULT_CONFIG_FILE;

pub(crate) const ARG_CONFIG: &str = "config";
pub(crate) const ARG_VERSION: &str = "version";
pub(crate) const ARG_POSITIONAL: &str = "positional";

const ABOUT: &str = "fleetd is the server component of fleet, a simple orchestration system for \
                     scheduling systemd units in a cluster.";

pub(crate) fn command() -> Command {
    let after_help = format!(
        "Every option can also be set as `name = value` in the config file ({DEFAULT_CONFIG_FILE} \
         unless --config is given) or in the environment as FLEET_<NAME>, e.g. FLEET_AGENT_TTL=3s.\n\
         Precedence: flag, then environment, then config file, then default.\n\n\
         `fleetd completion bash|zsh|fish` prints a shell completion script."
    );
    let mut cmd = Command::new("fleetd")
        .about(ABOUT)
        .after_help(after_help)
        .color(ColorChoice::Never)
        .disable_version_flag(true)
        // Go's flag package lets the last occurrence win; so do we.
        .args_override_self(true)
        .arg(
            Arg::new(ARG_CONFIG)
                .long("config")
                .value_name("PATH")
                .help(format!(
                    "Path to the config file (default: {DEFAULT_CONFIG_FILE} if it exists)"
                )),
        )
        .arg(
            Arg::new(ARG_VERSION)
                .long("version")
                .action(ArgAction::SetTrue)
                .help("Print the version and exit"),
        )
        .arg(
            Arg::new(ARG_POSITIONAL)
                .action(ArgAction::Append)
                .num_args(1..)
                .hide(true),
        );
    for spec in OPTIONS {
        let default = if spec.default.is_empty() {
            String::new()
        } else {
            format!(" [default: {}]", spec.default)
        };
        let arg = Arg::new(spec.name)
            .long(spec.flag)
            .value_name("VALUE")
            .help(format!("{}{default}", spec.help));
        let arg = match spec.kind {
            FlagKind::Bool => arg
                .value_name("BOOL")
                .num_args(0..=1)
                .default_missing_value("true"),
            // As Go's flag package: the next word is the value, even `-1s` (rejected
            // later with a clear reason instead of "unexpected argument").
            FlagKind::Value => arg.allow_hyphen_values(true),
        };
        cmd = cmd.arg(arg);
    }
    cmd
}

//! fleetctl's command line: fleet's commands and flags (clap derive), with fleet's
//! `FLEETCTL_<FLAG>` environment variables for the global flags, pflag-style booleans
//! (`--debug`, `--debug=false`), unambiguous command prefixes (`list-m`), `-l/--l/--full` etc.

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Parser, Subcommand};

pub const DEFAULT_ENDPOINT: &str = "unix:///var/run/fleet.sock";

const ABOUT: &str =
    "fleetctl is a command-line interface to fleet, the cluster-wide CoreOS init system.";

pub(crate) fn positive_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{s:?}: must be more than 0 seconds"))
    }
}

/// `--strict-host-key-checking`'s values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKeyChecking {
    Off,
    /// Ask on first contact.
    Ask,
    /// OpenSSH's `accept-new`: add unknown hosts without asking.
    AcceptNew,
}

fn host_key_checking(s: &str) -> Result<HostKeyChecking, String> {
    match s.to_ascii_lowercase().as_str() {
        "accept-new" => Ok(HostKeyChecking::AcceptNew),
        "1" | "t" | "true" | "y" | "yes" | "on" => Ok(HostKeyChecking::Ask),
        "0" | "f" | "false" | "n" | "no" | "off" => Ok(HostKeyChecking::Off),
        _ => Err(format!("{s:?}: want true, false or accept-new")),
    }
}

fn nonnegative_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{s:?}: must be 0 (no limit) or more seconds"))
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "fleetctl",
    about = ABOUT,
    disable_help_flag = true,
    disable_version_flag = true,
    infer_subcommands = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Flags every command accepts, anywhere on the line. A flag not given is read from
/// `FLEETCTL_<NAME>` (upper case, `-` -> `_`) when that is set and not empty.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Print usage information and exit
    #[arg(short = 'h', long = "help", alias = "h", global = true, action = ArgAction::Help)]
    pub help: Option<bool>,

    /// Print out more debug information to stderr
    #[arg(long, global = true, env = "FLEETCTL_DEBUG", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", hide_default_value = true,
          value_parser = BoolishValueParser::new(), hide_possible_values = true, action = ArgAction::Set)]
    pub debug: bool,

    /// Print the version and exit
    #[arg(short = 'v', long = "version", global = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", hide_default_value = true,
          value_parser = BoolishValueParser::new(), hide_possible_values = true, action = ArgAction::Set)]
    pub version: bool,

    /// Adapter used to execute fleetctl commands. Only "API" is supported ("etcd" was fleet's
    /// direct registry access)
    #[arg(long, global = true, env = "FLEETCTL_DRIVER", default_value = "API")]
    pub driver: String,

    /// Location of the fleet API: unix:///PATH, http://HOST:PORT or https://HOST:PORT
    #[arg(long, global = true, env = "FLEETCTL_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,

    /// Keyspace for fleet data in etcd (accepted for compatibility, unused)
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_ETCD_KEY_PREFIX",
        default_value = "/_coreos.com/fleet/"
    )]
    pub etcd_key_prefix: String,

    /// Location of TLS key file used to secure communication with the fleet API
    #[arg(long, global = true, env = "FLEETCTL_KEY_FILE", alias = "etcd-keyfile")]
    pub key_file: Option<String>,

    /// Location of TLS cert file used to secure communication with the fleet API
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_CERT_FILE",
        alias = "etcd-certfile"
    )]
    pub cert_file: Option<String>,

    /// Location of TLS CA file used to secure communication with the fleet API
    #[arg(long, global = true, env = "FLEETCTL_CA_FILE", alias = "etcd-cafile")]
    pub ca_file: Option<String>,

    /// Bearer token for fleetd's API over TCP (fleetd's api_tokens_file; an operator makes one
    /// with `fleetctl token new`). Sent only over https:// or to loopback
    #[arg(long, global = true, env = "FLEETCTL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// File used to store remote machine fingerprints (OpenSSH's format; hashed entries are read)
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_KNOWN_HOSTS_FILE",
        default_value = "~/.fleetctl/known_hosts"
    )]
    pub known_hosts_file: String,

    /// Verify host keys presented by remote machines before initiating SSH connections: true
    /// (ask on first contact, refuse a changed key), false (no checking), or accept-new (add
    /// unknown hosts without asking, still refuse a changed key)
    #[arg(long, global = true, env = "FLEETCTL_STRICT_HOST_KEY_CHECKING", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", default_value = "true",
          value_parser = host_key_checking, hide_possible_values = true, action = ArgAction::Set)]
    pub strict_host_key_checking: HostKeyChecking,

    /// Amount of time in seconds to allow for SSH connection initialization before failing
    #[arg(long, global = true, env = "FLEETCTL_SSH_TIMEOUT", default_value = "10.0",
          value_parser = positive_seconds)]
    pub ssh_timeout: f64,

    /// Establish an SSH tunnel through the provided address (HOST[:PORT]) for communication
    /// with fleet
    #[arg(long, global = true, env = "FLEETCTL_TUNNEL")]
    pub tunnel: Option<String>,

    /// Amount of time in seconds to allow a single API request before considering it failed
    #[arg(long, global = true, env = "FLEETCTL_REQUEST_TIMEOUT", default_value = "3.0",
          value_parser = positive_seconds)]
    pub request_timeout: f64,

    /// Username to use when connecting to CoreOS instance
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_SSH_USERNAME",
        default_value = "core"
    )]
    pub ssh_username: String,

    /// The fleetctl that SSH runs on remote machines: `fd-forward` for --tunnel, and the status
    /// and journal of units run by the process supervisor
    #[arg(
        long,
        global = true,
        hide = true,
        env = "FLEETCTL_REMOTE_FLEETCTL",
        default_value = "fleetctl"
    )]
    pub remote_fleetctl: String,

    /// DEPRECATED: do not use this flag.
    #[arg(long, global = true, hide = true, env = "FLEETCTL_EXPERIMENTAL_API", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", default_value = "true",
          value_parser = BoolishValueParser::new(), hide_possible_values = true, action = ArgAction::Set)]
    pub experimental_api: bool,
}

/// `--block-attempts`, `--no-block` and our `--timeout`.
#[derive(Args, Debug, Clone, Default)]
pub struct Block {
    /// Wait until the units reach the requested state, performing up to N attempts of 2 seconds
    /// each before giving up. A value of 0 indicates no limit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub block_attempts: u32,

    /// Do not wait until the units reach the requested state before exiting.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", hide_default_value = true, value_parser = BoolishValueParser::new(), hide_possible_values = true, action = ArgAction::Set)]
    pub no_block: bool,

    /// Give up waiting after this many seconds in total (0 = no limit).
    #[arg(long, value_name = "SECONDS", default_value = "0", value_parser = nonnegative_seconds)]
    pub timeout: f64,
}

/// `--replace` and the deprecated `--sign`.
#[derive(Args, Debug, Clone, Default)]
pub struct Replace {
    /// Replace the old scheduled units in the cluster with new versions.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", hide_default_value = true, value_parser = BoolishValueParser::new(), hide_possible_values = true, action = ArgAction::Set)]
    pub replace: bool,

    /// DEPRECATED - this option cannot be used
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", hide_default_value = true, value_parser = BoolishValueParser::new(), hide_possible_values = true, action = ArgAction::Set)]
    pub sign: bool,
}

/// `--full`, `--no-legend`, `--fields`.
#[derive(Args, Debug, Clone, Default)]
pub struct List {
    /// Do not ellipsize fields on output
    #[arg(short = 'l', long, alias = "l", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", hide_default_value = true,
          value_parser = BoolishValueParser::new(), hide_possible_values = true, action = ArgAction::Set)]
    pub full: bool,

    /// Do not print a legend (column headers)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", hide_default_value = true, value_parser = BoolishValueParser::new(), hide_possible_values = true, action = ArgAction::Set)]
    pub no_legend: bool,

    /// Columns to print, comma-separated (the valid ones are listed in the command's help)
    #[arg(long)]
    pub fields: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Take a machine out of service: no new units, and its units move elsewhere
    #[command(
        long_about = "Take a machine out of service: no new units, and its units move elsewhere.\n\n\
        MACHINE is a unique prefix of a machine id. The engine moves the machine's units one at a\n\
        time, each with its MachineOf followers, to machines their Conflicts, MachineOf and\n\
        MachineMetadata allow, and moves the next once the last runs at its new place. A unit\n\
        that cannot move (MachineID names this machine, or no machine takes it) stays and runs\n\
        on; global units stay. The machine stays drained across restarts until undrained.\n\n\
        Prints what becomes of each unit and waits until the machine holds none that can move,\n\
        unless --no-block.\n\n\
        \tfleetctl drain 2444264c"
    )]
    Drain {
        #[command(flatten)]
        block: Block,
        #[arg(value_name = "MACHINE")]
        machine: Vec<String>,
    },

    /// Return a drained machine to service
    #[command(long_about = "Return a drained machine to service.\n\n\
        New units may be placed on it again; units that moved away stay where they are.\n\n\
        \tfleetctl undrain 2444264c")]
    Undrain {
        #[arg(value_name = "MACHINE")]
        machine: Vec<String>,
    },

    /// Output the contents of a submitted unit
    #[command(long_about = "Output the contents of a submitted unit.\n\n\
        Outputs the unit file as the registry stores it (normalized: comments dropped, one\n\
        blank line between sections).")]
    Cat {
        #[arg(value_name = "UNIT")]
        units: Vec<String>,
    },

    /// Print a shell completion script for fleetctl
    #[command(long_about = "Print a shell completion script for fleetctl.\n\n\
        The fleet package installs the bash and zsh ones. To load them by hand:\n\
        \tsource <(fleetctl completion bash)\n\
        \tfleetctl completion zsh > \"${fpath[1]}/_fleetctl\"")]
    Completion {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },

    /// Destroy one or more units in the cluster
    #[command(long_about = "Destroy one or more units in the cluster.\n\n\
        Stops and unloads the units, then removes them from the registry; waits until they are\n\
        gone unless --no-block.\n\n\
        Destroy a single unit:\n\tfleetctl destroy foo.service\n\n\
        Destroy an entire directory of units (the shell expands the glob):\n\tfleetctl destroy myservice/*")]
    Destroy {
        #[command(flatten)]
        block: Block,
        #[arg(value_name = "UNIT")]
        units: Vec<String>,
    },

    /// Proxy stdin and stdout to a unix domain socket
    #[command(name = "fd-forward")]
    FdForward {
        #[arg(value_name = "SOCKET")]
        socket: String,
    },

    /// Copy the units of a Go fleet (its etcd v2 keyspace) into this cluster
    #[command(
        name = "import-v2",
        long_about = "Copy the units of a Go fleet (its etcd v2 keyspace) into this cluster.\n\n\
        Reads job/ and unit/ under --etcd-key-prefix through etcd's v2 API at ETCD_URL and creates\n\
        each unit here with the same name, body (so the same hash) and desired state. A unit\n\
        already here with the same hash is skipped; one with another body is reported and left\n\
        alone unless --replace. Exits 1 when any unit did not come over as it is in fleet.\n\n\
        Move a cluster: stop the Go fleetds (the units keep running under systemd), run\n\
        \tfleetctl import-v2 http://127.0.0.1:2379\n\
        against one fleetd of ours, then start ours on every machine: each starts the units placed\n\
        on it, and systemd leaves a unit that already runs as it is."
    )]
    ImportV2 {
        /// Print what would be imported, and change nothing
        #[arg(long)]
        dry_run: bool,
        /// Replace units here whose body differs from the Go fleet's
        #[arg(long)]
        replace: bool,
        /// etcd's client URL, http://HOST:PORT (the v2 API must be on: --enable-v2=true)
        #[arg(value_name = "ETCD_URL")]
        etcd_url: String,
    },

    /// Print the journal of a unit in the cluster to stdout
    #[command(
        long_about = "Print the journal of a unit in the cluster to stdout.\n\n\
        Runs `journalctl --unit UNIT --no-pager -n LINES --output MODE [-f]` on the unit's machine\n\
        (over SSH unless it is this one). On a machine without systemd, whose units the process\n\
        supervisor runs, prints the supervisor's kept output of the unit instead (modes short, cat)."
    )]
    Journal {
        /// Number of recent log lines to return
        #[arg(long, default_value_t = 10)]
        lines: u32,
        /// Continuously print new entries as they are appended to the journal.
        #[arg(short = 'f', long, alias = "f", num_args = 0..=1, require_equals = true,
              default_missing_value = "true", default_value = "false", hide_default_value = true,
              value_parser = BoolishValueParser::new(), hide_possible_values = true, action = ArgAction::Set)]
        follow: bool,
        /// Port of SSH server running on the host to connect to
        #[arg(long, default_value_t = 22)]
        ssh_port: u16,
        /// Execute journal command with sudo
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
              default_value = "false", hide_default_value = true, value_parser = BoolishValueParser::new(), hide_possible_values = true, action = ArgAction::Set)]
        sudo: bool,
        /// Output mode, passed to journalctl
        #[arg(long, default_value = "short")]
        output: String,
        #[arg(value_name = "UNIT")]
        units: Vec<String>,
    },

    /// Enumerate the current hosts in the cluster
    #[command(
        name = "list-machines",
        long_about = "Enumerate the current hosts in the cluster.\n\n\
        Lists all active machines within the cluster. Previously active machines will not appear\n\
        in this list. Valid fields: ip,machine,metadata,state (default machine,ip,metadata, and\n\
        state too while some machine is drained). state is active or drained."
    )]
    ListMachines {
        #[command(flatten)]
        list: List,
    },

    /// List the units that exist in the cluster.
    #[command(
        name = "list-unit-files",
        long_about = "List the units that exist in the cluster.\n\n\
        Lists all unit files that exist in the cluster (whether or not they are loaded onto a\n\
        machine). Valid fields: desc,dstate,global,hash,reason,state,target,tmachine,unit\n\
        (default unit,hash,dstate,state,target). \"reason\" says why the engine cannot place a unit."
    )]
    ListUnitFiles {
        #[command(flatten)]
        list: List,
    },

    /// List the current state of units in the cluster
    #[command(
        name = "list-units",
        long_about = "List the current state of units in the cluster.\n\n\
        Lists the state of every unit on every machine reporting it. Valid fields:\n\
        active,hash,load,machine,sub,unit (default unit,machine,active,sub).\n\n\
        For easily parsable output, you can remove the column headers:\n\tfleetctl list-units --no-legend\n\n\
        Output the list without ellipses:\n\tfleetctl list-units --full"
    )]
    ListUnits {
        #[command(flatten)]
        list: List,
    },

    /// Schedule one or more units in the cluster, first submitting them if necessary.
    #[command(
        long_about = "Schedule one or more units in the cluster, first submitting them if necessary.\n\n\
        Waits until each unit is loaded on its machine, unless --no-block.\n\n\
        Load a single unit:\n\tfleetctl load foo.service\n\n\
        Load an entire directory of units (the shell expands the glob):\n\tfleetctl load myservice/*"
    )]
    Load {
        #[command(flatten)]
        block: Block,
        #[command(flatten)]
        replace: Replace,
        #[arg(value_name = "UNIT")]
        units: Vec<String>,
    },

    /// Instruct systemd to restart one or more units in the cluster.
    #[command(
        long_about = "Instruct systemd to restart one or more units in the cluster.\n\n\
        A launched unit is stopped (waiting until it is loaded) and started again (waiting until\n\
        systemd reports it active); a loaded unit is started. With --no-block only the start is\n\
        not waited for.\n\n\
        Restart a single unit:\n\tfleetctl restart foo.service"
    )]
    Restart {
        #[command(flatten)]
        block: Block,
        #[arg(value_name = "UNIT")]
        units: Vec<String>,
    },

    /// Open interactive shell on a machine in the cluster
    #[command(long_about = "Open interactive shell on a machine in the cluster.\n\n\
        MACHINE is a unique prefix of a machine id, UNIT a unit whose machine to reach. With a\n\
        command, runs it there and exits with its exit code. Keys come from ssh-agent only\n\
        (SSH_AUTH_SOCK). Through --tunnel, the machine is reached through the tunnel host.\n\n\
        \tfleetctl ssh 2444264c\n\tfleetctl ssh hello.service systemctl status hello")]
    Ssh {
        /// Open SSH connection to machine running provided unit.
        #[arg(long)]
        unit: Option<String>,
        /// Open SSH connection to a machine.
        #[arg(long)]
        machine: Option<String>,
        /// Forward local ssh-agent to target machine.
        #[arg(short = 'A', long, alias = "A", num_args = 0..=1, require_equals = true,
              default_missing_value = "true", default_value = "false", hide_default_value = true,
              value_parser = BoolishValueParser::new(), hide_possible_values = true, action = ArgAction::Set)]
        forward_agent: bool,
        /// Port of SSH server running on the host to connect to
        #[arg(long, default_value_t = 22)]
        ssh_port: u16,
        #[arg(
            value_name = "MACHINE|UNIT",
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        args: Vec<String>,
    },

    /// Show where units would go and what else would move, changing nothing
    #[command(
        long_about = "Show where units would go and what else would move, changing nothing.\n\n\
        Asks fleetd for one scheduling pass over its view of the cluster, with each argument\n\
        that is a local unit file planned as started, and each other argument as the unit of\n\
        that name in the registry is. Prints UNIT, MACHINE, ACTION (place, keep, move, unplace,\n\
        none, global) and REASON, then the other units the same pass would move. Advisory: the\n\
        engine decides on its own view moments later.\n\n\
        \tfleetctl plan web.service units/db.service"
    )]
    Plan {
        #[arg(value_name = "UNIT|FILE")]
        units: Vec<String>,
    },

    /// Instruct systemd to start one or more units in the cluster, first submitting and loading if necessary.
    #[command(
        long_about = "Instruct systemd to start one or more units in the cluster, first submitting and loading if necessary.\n\n\
        Waits until each unit is launched and systemd reports it active on its machine (a unit that\n\
        fails makes fleetctl exit 1), unless --no-block.\n\n\
        Start a single unit:\n\tfleetctl start foo.service\n\n\
        Start an entire directory of units (the shell expands the glob):\n\tfleetctl start myservice/*\n\n\
        Start an instance of a template unit (submitted or beside the path):\n\tfleetctl start units/web@8080.service\n\n\
        Give every running instance of a template new content, two at a time:\n\tfleetctl start --replace --rolling=2 units/web@.service\n\n\
        Give a global unit new content one machine at a time:\n\tfleetctl start --replace --rolling units/monitor.service\n\n\
        Units a unit Requires=, Requisite=, BindsTo= or Wants= that are already submitted are\n\
        started with it, on its machine. With --with-deps, so are the unit files of those beside\n\
        the given file and a sidekick's MachineOf= target; each is printed as 'Brought along:'.\n\
        \tfleetctl start --with-deps examples/apache.service"
    )]
    Start {
        #[command(flatten)]
        block: Block,
        #[command(flatten)]
        replace: Replace,
        /// Also submit and start the unit files beside the given ones that a unit Requires=,
        /// Requisite=, BindsTo= or Wants=, and a sidekick's MachineOf= target
        #[arg(long)]
        with_deps: bool,
        /// Print where the units would go and what else would move (as `fleetctl plan`), and
        /// change nothing
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        rolling: crate::rolling::Rolling,
        #[arg(value_name = "UNIT")]
        units: Vec<String>,
    },

    /// Explain where a unit runs and why, or why it cannot, per machine
    #[command(
        long_about = "Explain where a unit runs and why, or why it cannot, per machine.\n\n\
        Prints the engine's reason for the unit's placement, then one line per machine with\n\
        whether the unit may run there and why not (MachineMetadata, MachineID, Conflicts with\n\
        which unit, MachineOf target elsewhere, Replaces).\n\n\
        \tfleetctl why web.service"
    )]
    Why {
        #[arg(value_name = "UNIT")]
        unit: String,
    },

    /// Print the cluster's events (units placed, moved, started, failed; machines joined, lost)
    #[command(
        long_about = "Print the cluster's events, oldest first: units submitted, placed, moved, started,\n\
        failed, stopped, destroyed or unplaceable; machines joined or lost; the engine leader.\n\n\
        Prints the recent events the answering fleetd kept (the last 1000 since it started), then\n\
        with -f each new one as it happens, until interrupted. One line per event: TIME (UTC),\n\
        KIND, UNIT, MACHINE, DETAIL.\n\n\
        \tfleetctl events -f --unit 'web@*'"
    )]
    Events {
        /// Keep printing events as they happen
        #[arg(short = 'f', long, alias = "f", num_args = 0..=1, require_equals = true,
              default_missing_value = "true", default_value = "false", hide_default_value = true,
              value_parser = BoolishValueParser::new(), hide_possible_values = true, action = ArgAction::Set)]
        follow: bool,
        /// Only events of units whose name matches this glob (`*`, `?`)
        #[arg(long, value_name = "GLOB", default_value = "")]
        unit: String,
        /// Only events of this machine (its ID or the 8-character short form)
        #[arg(long, value_name = "ID", default_value = "")]
        machine: String,
        /// Print machine IDs whole
        #[arg(short = 'l', long, alias = "l", num_args = 0..=1, require_equals = true,
              default_missing_value = "true", default_value = "false", hide_default_value = true,
              value_parser = BoolishValueParser::new(), hide_possible_values = true, action = ArgAction::Set)]
        full: bool,
        /// Do not print a legend (column headers)
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
              default_value = "false", hide_default_value = true, value_parser = BoolishValueParser::new(), hide_possible_values = true, action = ArgAction::Set)]
        no_legend: bool,
    },

    /// Output the status of one or more units in the cluster
    #[command(
        long_about = "Output the status of one or more units in the cluster.\n\n\
        Runs `systemctl status -l UNIT` on the unit's machine: here when it is this machine, else\n\
        over SSH. On a machine without systemd, whose units the process supervisor runs, shows the\n\
        supervisor's state of the unit and its last output."
    )]
    Status {
        /// Port of SSH server running on the host to connect to
        #[arg(long, default_value_t = 22)]
        ssh_port: u16,
        #[arg(value_name = "UNIT")]
        units: Vec<String>,
    },

    /// Instruct systemd to stop one or more units in the cluster.
    #[command(
        long_about = "Instruct systemd to stop one or more units in the cluster.\n\n\
        The units stay loaded on their machines; waits until they are, unless --no-block.\n\n\
        Stop a single unit:\n\tfleetctl stop foo.service"
    )]
    Stop {
        #[command(flatten)]
        block: Block,
        #[arg(value_name = "UNIT")]
        units: Vec<String>,
    },

    /// Upload one or more units to the cluster without starting them
    #[command(
        long_about = "Upload one or more units to the cluster without starting them.\n\n\
        Submit a single unit:\n\tfleetctl submit foo.service\n\n\
        Submit a directory of units (the shell expands the glob):\n\tfleetctl submit myservice/*"
    )]
    Submit {
        #[command(flatten)]
        replace: Replace,
        #[arg(value_name = "UNIT")]
        units: Vec<String>,
    },

    /// Unschedule one or more units in the cluster.
    #[command(long_about = "Unschedule one or more units in the cluster.\n\n\
        Stops and unloads the units from their machines (they stay in the registry); waits until\n\
        they are, unless --no-block.")]
    Unload {
        #[command(flatten)]
        block: Block,
        #[arg(value_name = "UNIT")]
        units: Vec<String>,
    },

    /// Make an API token for fleetd's api_tokens_file
    #[command(subcommand)]
    Token(TokenCommand),

    /// DEPRECATED - No longer works
    Verify {
        #[arg(value_name = "UNIT")]
        units: Vec<String>,
    },

    /// Print the version and exit
    Version,

    /// `status` of units on this machine (systemd's, or the process supervisor's): what
    /// `fleetctl status` runs on a unit's machine over SSH. Hidden: not for users.
    #[command(name = "local-status", hide = true)]
    LocalStatus {
        #[arg(value_name = "UNIT")]
        units: Vec<String>,
    },

    /// `journal` of a unit on this machine: what `fleetctl journal` runs over SSH. Hidden.
    #[command(name = "local-journal", hide = true)]
    LocalJournal {
        #[arg(long, default_value_t = 10)]
        lines: u32,
        #[arg(short = 'f', long, num_args = 0..=1, require_equals = true,
              default_missing_value = "true", default_value = "false",
              value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
        follow: bool,
        #[arg(long, default_value = "short")]
        output: String,
        #[arg(value_name = "UNIT")]
        unit: String,
    },

    /// Write fleetctl's manual pages (fleetctl.1, fleetctl-COMMAND.1) into DIR, as the fleet
    /// package installs them; hidden because only packagers need it (users read `man fleetctl`).
    #[command(hide = true)]
    Man {
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
}

/// `fleetctl token ...`
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum TokenCommand {
    /// Make a new random token: prints the token, then the line for fleetd's api_tokens_file
    #[command(long_about = "Make a new random API token.\n\n\
        Prints two lines on stdout: the token (256 random bits; shown only now, fleetd keeps\n\
        only its hash), then the line to add to fleetd's api_tokens_file. Add the line, send\n\
        fleetd SIGHUP (systemctl reload fleet), and give the token to the client\n\
        (fleetctl --token TOKEN, or FLEETCTL_TOKEN).\n\n\
        Roles: read (GET only), write (also submit, start, stop, destroy units), admin (also\n\
        change machine metadata).\n\n\
        \tfleetctl token new --name ci --role write")]
    New {
        /// Name of the token in fleetd's logs and errors (no spaces)
        #[arg(long)]
        name: String,
        /// read, write or admin
        #[arg(long, default_value = "read")]
        role: String,
    },
}

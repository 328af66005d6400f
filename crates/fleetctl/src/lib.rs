//! fleetctl: the command-line client of fleet's HTTP API v1.
//!
//! ```no_run
//! // What the binary does:
//! std::process::exit(fleetctl::run(std::env::args_os()));
//! ```
//!
//! Tests and scripts point it at a fleetd with `FLEETCTL_ENDPOINT=unix:///path/to/sock` (or
//! `http://127.0.0.1:PORT`), like every other global flag's `FLEETCTL_*` variable.
//!
//! Layout: [`cli`] (flags), [`commands`] (the flows, I/O), and the pure decisions they use:
//! [`create`] (lazy creation, `--replace`), [`plan`] (state changes per command), [`wait`]
//! (when a wait is over), [`fields`] + [`tabwriter`] (tables), [`rolling`] (`start --replace
//! --rolling`: its selection and rollout machine, and the loop around them). [`remote`] is everything over
//! SSH (the `--tunnel`, `ssh`, `status`, `journal`), on the `fleet-ssh` crate.

pub mod cli;
pub mod client;
pub mod commands;
pub mod create;
pub mod deps;
pub mod drain;
pub mod events;
pub mod explain;
pub mod fdforward;
pub mod fields;
pub mod importv2;
pub mod output;
pub mod plan;
pub mod remote;
pub mod rolling;
pub mod tabwriter;
pub mod token;
pub mod wait;

use clap::{CommandFactory, Parser};
use cli::{Cli, Command, Global};
use commands::Change;
use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs fleetctl with `args` (program name first) and returns the exit code: 0 success, 1 any
/// failure, 2 usage errors (and `verify`, as fleet).
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    if args.len() <= 1 {
        return print_help();
    }
    let args = goflags::single_dash_long(&Cli::command(), args);
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    if cli.global.version {
        println!("fleetctl version {VERSION}");
        return 0;
    }
    let Some(command) = cli.command else {
        return print_help();
    };
    match command {
        Command::Version => {
            println!("fleetctl version {VERSION}");
            return 0;
        }
        Command::Verify { .. } => {
            eprintln!("{}", commands::SIGN_WARNING);
            return 2;
        }
        Command::FdForward { socket } => return fdforward::run(&socket),
        Command::Token(cli::TokenCommand::New { name, role }) => {
            return token::run_new(&name, &role)
        }
        Command::Completion { shell } => return print_generated(Ok(completion(shell))),
        Command::Man { dir } => {
            return match man_pages(&dir) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("fleetctl: writing manual pages to {}: {e}", dir.display());
                    1
                }
            }
        }
        Command::LocalStatus { units } => return remote::local_status(&units),
        Command::LocalJournal {
            lines,
            follow,
            output,
            unit,
        } => return remote::local_journal(&unit, lines, follow, &output),
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Unable to start: {e}");
            return 1;
        }
    };
    runtime.block_on(async {
        // The tunnel first, as fleet: every request goes through it.
        let ssh = match remote::Ssh::new(&cli.global).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("fleetctl: {e}");
                return 1;
            }
        };
        let fleet = match connect(&cli.global, &ssh) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("Unable to initialize client: {e}");
                return 1;
            }
        };
        if let Command::ImportV2 {
            dry_run,
            replace,
            etcd_url,
        } = &command
        {
            let prefix = &cli.global.etcd_key_prefix;
            return importv2::run(&fleet, etcd_url, prefix, *dry_run, *replace).await;
        }
        dispatch(&fleet, &ssh, command).await
    })
}

fn print_help() -> i32 {
    let _ = Cli::command().print_help();
    0
}

/// fleetctl's completion script for `shell`, generated from the same definitions as its
/// parser, so it never offers a flag or command that fleetctl would refuse.
pub fn completion(shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "fleetctl", &mut out);
    out
}

/// Writes fleetctl's manual pages (roff, section 1) into `dir`: `fleetctl.1` and one
/// `fleetctl-COMMAND.1` per visible command, which `fleetctl.1` refers to. Generated from the
/// definitions `--help` prints, so the two never disagree.
pub fn man_pages(dir: &std::path::Path) -> std::io::Result<()> {
    clap_mangen::generate_to(Cli::command().version(VERSION), dir)
}

/// Writes generated text to stdout; generated into memory first so that a closed pipe is an
/// error message and exit 1, not a panic inside the generator.
fn print_generated(text: std::io::Result<Vec<u8>>) -> i32 {
    use std::io::Write;
    let written = text.and_then(|bytes| {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&bytes)?;
        stdout.flush()
    });
    match written {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("fleetctl: writing to stdout: {e}");
            1
        }
    }
}

/// The API client the global flags describe (through the SSH tunnel when there is one), or
/// why there is none.
pub fn connect(global: &Global, ssh: &remote::Ssh) -> Result<client::Fleet, String> {
    if global.driver.eq_ignore_ascii_case("etcd") {
        return Err("--driver=etcd is not supported: this fleetctl only talks to fleetd's API (--driver=API); point --endpoint at fleetd (default unix:///var/run/fleet.sock)".into());
    }
    if !global.driver.eq_ignore_ascii_case("API") {
        return Err(format!(
            "unrecognized driver {:?}: only \"API\" is supported",
            global.driver
        ));
    }
    if !global.experimental_api {
        eprintln!("WARNING: --experimental-api is deprecated and ignored; fleetctl always uses fleetd's API");
    }
    // Several endpoints are tried in order (fleet used only the first).
    let endpoint = global.endpoint.trim();
    let endpoints = api::Endpoint::parse_list(endpoint).map_err(|e| e.to_string())?;
    // As fleet: the TLS files apply to https:// endpoints; they are read only when one is
    // used, so a stray FLEETCTL_CA_FILE does not break unix:// access.
    let tls = if endpoints.iter().any(|(_, e)| e.is_tls()) {
        let files = api::client::TlsFiles {
            ca_file: global
                .ca_file
                .as_deref()
                .filter(|f| !f.is_empty())
                .map(Into::into),
            cert_file: global
                .cert_file
                .as_deref()
                .filter(|f| !f.is_empty())
                .map(Into::into),
            key_file: global
                .key_file
                .as_deref()
                .filter(|f| !f.is_empty())
                .map(Into::into),
        };
        Some(files.load()?)
    } else {
        None
    };
    let token = global
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    let opts = api::ClientOptions {
        request_timeout: Duration::from_secs_f64(global.request_timeout),
    };
    let client = match ssh.tunnel() {
        None => api::Client::with_security(endpoint, opts, api::Security { tls, token })
            .map_err(|e| e.to_string())?,
        Some(session) => {
            // The tunnel encrypts the way, so a token may travel over http:// inside it.
            let mut routes = Vec::new();
            for (name, endpoint) in endpoints {
                let transport = ssh
                    .tunnel_transport(&endpoint)
                    .ok_or_else(|| "the SSH tunnel is gone".to_string())?;
                routes.push(api::client::Route {
                    transport: endpoint
                        .secure(transport, tls.as_ref())
                        .map_err(|e| e.to_string())?,
                    ca_file: global.ca_file.as_deref().map(Into::into),
                    endpoint,
                    name: format!("{name} through the SSH tunnel to {}", session.name()),
                });
            }
            api::Client::with_routes(routes, opts)
                .with_token(token.as_deref())
                .map_err(|e| e.to_string())?
        }
    };
    Ok(client::Fleet::new(client, global.debug))
}

async fn dispatch(fleet: &client::Fleet, ssh: &remote::Ssh, command: Command) -> i32 {
    let out = Arc::new(output::Output::new());
    match command {
        Command::Submit { replace, units } => commands::submit(fleet, &units, &replace, out).await,
        Command::Load {
            block,
            replace,
            units,
        } => commands::load_or_start(fleet, &units, &block, &replace, false, out).await,
        Command::Start {
            dry_run: true,
            units,
            ..
        } => explain::plan(fleet, &units, true, &out).await,
        Command::Start {
            block,
            replace,
            rolling,
            units,
            ..
        } if rolling.rolling.is_some() => {
            if !replace.replace {
                eprintln!("--rolling replaces running units: it needs --replace");
                return 2;
            }
            rolling::run(fleet, &units, &rolling, &block, &out).await
        }
        Command::Start {
            block,
            replace,
            units,
            with_deps,
            ..
        } => {
            let Ok(units) = deps::bring_along(fleet, &units, with_deps, &out).await else {
                return 1;
            };
            commands::load_or_start(fleet, &units, &block, &replace, true, out).await
        }
        Command::Plan { units } => explain::plan(fleet, &units, false, &out).await,
        Command::Why { unit } => explain::why(fleet, &unit, &out).await,
        Command::Drain { block, machine } => drain::drain(fleet, &machine, &block, &out).await,
        Command::Undrain { machine } => drain::undrain(fleet, &machine, &out).await,
        Command::Events {
            follow,
            unit,
            machine,
            full,
            no_legend,
        } => {
            let filter = api::types::EventFilter { unit, machine };
            events::print(fleet, &filter, follow, full, no_legend).await
        }
        Command::Stop { block, units } => {
            commands::change(fleet, &units, &block, Change::Stop, out).await
        }
        Command::Unload { block, units } => {
            commands::change(fleet, &units, &block, Change::Unload, out).await
        }
        Command::Destroy { block, units } => {
            commands::change(fleet, &units, &block, Change::Destroy, out).await
        }
        Command::Restart { block, units } => {
            commands::change(fleet, &units, &block, Change::Restart, out).await
        }
        Command::Cat { units } => commands::cat(fleet, &units).await,
        Command::ListUnits { list } => commands::list_units(fleet, &list).await,
        Command::ListUnitFiles { list } => commands::list_unit_files(fleet, &list).await,
        Command::ListMachines { list } => commands::list_machines(fleet, &list).await,
        Command::Status { units, ssh_port } => remote::status(fleet, ssh, &units, ssh_port).await,
        Command::Journal {
            lines,
            follow,
            sudo,
            output,
            units,
            ssh_port,
        } => {
            let j = remote::JournalArgs {
                lines,
                follow,
                sudo,
                output,
            };
            remote::journal(fleet, ssh, &units, &j, ssh_port).await
        }
        Command::Ssh {
            unit,
            machine,
            forward_agent,
            ssh_port,
            args,
        } => {
            let a = remote::SshArgs {
                unit,
                machine,
                forward_agent,
                ssh_port,
                args,
            };
            remote::ssh(fleet, ssh, a).await
        }
        Command::Version
        | Command::Verify { .. }
        | Command::FdForward { .. }
        | Command::Completion { .. }
        | Command::Man { .. }
        | Command::ImportV2 { .. }
        | Command::LocalStatus { .. }
        | Command::LocalJournal { .. }
        | Command::Token(_) => unreachable_command(),
    }
}

/// Handled before connecting; kept out of `dispatch`'s happy path without a panic.
fn unreachable_command() -> i32 {
    eprintln!("internal error: command dispatched twice");
    1
}

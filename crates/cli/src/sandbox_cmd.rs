//! `portcullis sandbox-exec` (hidden): the first thing a sandboxed stdio MCP
//! server runs. `serve` starts it with the route's profile as JSON, the
//! session's work directory and the server's command line; it confines
//! itself (`portcullis_sandbox::exec_confined`) and executes the server, so
//! the gateway needs no `pre_exec` hook and the workspace no `unsafe`.
//! Any failure exits with [`portcullis_sandbox::SETUP_FAILED_EXIT`] before
//! the server runs (fail closed); `serve` audits it.
//!
//! With a PID namespace it starts itself again as the namespace's init
//! (`--init`, with the egress port it opened in `--egress-port`), which
//! runs the server; see `portcullis_sandbox::init_confined`.
//!
//! `--probe` runs every mechanism in this throw-away process and prints
//! what worked as JSON (`portcullis_sandbox::Support`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// The arguments `serve` passes.
#[derive(Debug, Args)]
pub struct SandboxExecArgs {
    /// The profile, as `Profile::to_json` wrote it.
    #[arg(long, required_unless_present = "probe")]
    profile: Option<String>,
    /// The session's work directory (made here; must not exist).
    #[arg(long, required_unless_present = "probe")]
    work_dir: Option<PathBuf>,
    /// The server's memory cgroup (made by `serve`), joined first.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Print which mechanisms the kernel offers, and exit.
    #[arg(long)]
    probe: bool,
    /// Run as the init of the server's PID namespace (started by
    /// `sandbox-exec` itself, never by `serve`).
    #[arg(long)]
    init: bool,
    /// With `--init`: the egress proxy's port inside the sandbox.
    #[arg(long, requires = "init")]
    egress_port: Option<u16>,
    /// The server's program and arguments.
    #[arg(last = true)]
    command: Vec<OsString>,
}

fn fail(message: &str) -> ExitCode {
    eprintln!("portcullis sandbox-exec: {message}");
    ExitCode::from(portcullis_sandbox::SETUP_FAILED_EXIT as u8)
}

/// Runs the subcommand; returns only on failure (or after `--probe`).
#[cfg(target_os = "linux")]
pub fn run(args: SandboxExecArgs) -> ExitCode {
    if args.probe {
        let support = portcullis_sandbox::probe();
        println!("{}", serde_json::to_string(&support).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    let (Some(profile), Some(work_dir)) = (args.profile, args.work_dir) else {
        return fail("--profile and --work-dir are required");
    };
    let profile = match portcullis_sandbox::Profile::from_json(&profile) {
        Ok(p) => p,
        Err(e) => return fail(&format!("invalid profile: {e}")),
    };
    let Some((program, rest)) = args.command.split_first() else {
        return fail("no command to run");
    };
    let e = if args.init {
        portcullis_sandbox::init_confined(&profile, &work_dir, args.egress_port, program, rest)
    } else {
        portcullis_sandbox::exec_confined(
            &profile,
            &work_dir,
            args.cgroup.as_deref(),
            program,
            rest,
        )
    };
    fail(&e.to_string())
}

/// Without Linux there is no sandbox: refuse.
#[cfg(not(target_os = "linux"))]
pub fn run(_args: SandboxExecArgs) -> ExitCode {
    fail("sandboxing needs Linux")
}

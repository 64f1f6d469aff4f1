//! `keel-agent`: the node's update loop (`run`), and its local API's client (`status`,
//! `events`, `check-now`, `pause`, `resume`, `metrics`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "keel-agent", about = "The node's A/B update loop (keel-agent)")]
struct Cli {
    /// The system description (its `[agent]` table is the loop's settings).
    #[arg(long, global = true, default_value = "/etc/keel/system.toml")]
    config: PathBuf,
    /// Read /proc, /sys and /etc under this directory.
    #[arg(long, global = true, default_value = "/")]
    root: PathBuf,
    /// Keep the records here.
    #[arg(long, global = true, default_value = "/var/lib/keel")]
    state: PathBuf,
    /// The local API's socket (default: the description's `agent.socket`).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the loop: finish what the last boot left, then check every interval.
    Run {
        /// The disk holding the slots (default: `boot.disk`, else the booted disk).
        #[arg(long)]
        disk: Option<PathBuf>,
        /// One pass (the boot step and one check), then exit: 0 done, 1 failed.
        #[arg(long)]
        once: bool,
    },
    /// What the agent does now.
    Status {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// The last events.
    Events,
    /// Check for an update now.
    CheckNow,
    /// Stop checking and installing until resumed (kept across restarts).
    Pause,
    /// Go on after a pause.
    Resume,
    /// The status in the Prometheus text format.
    Metrics,
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn load(cli: &Cli, dropins: &[PathBuf]) -> Res<keel_config::Config> {
    let loaded = keel_config::load_files(&cli.config, dropins)?;
    for f in &loaded.findings {
        eprintln!("{f}");
    }
    Ok(loaded.config.ok_or("the description has errors")?)
}

/// The node's identity drop-in, if it has one: at first boot fetched from the URL the
/// kernel command line names, asked again every ten seconds until it comes (a node must
/// not roll with a group it does not belong to).
fn identity(cli: &Cli) -> Res<Vec<PathBuf>> {
    let ua = concat!("keel-agent/", env!("CARGO_PKG_VERSION"), " (first boot)");
    loop {
        match keel_agent::identity::drop_in(&cli.config, &cli.root, &cli.state, ua) {
            Ok(p) => return Ok(p.into_iter().collect()),
            // The server's answer, or the way to it: asked again. A local failure (the
            // description, the state directory, a kept identity edited) is not.
            Err(e @ keel_agent::Error::Identity { .. }) => {
                eprintln!("keel-agent: {e}; asking again in 10 s");
                std::thread::sleep(std::time::Duration::from_secs(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn socket(cli: &Cli) -> Res<PathBuf> {
    if let Some(s) = &cli.socket {
        return Ok(s.clone());
    }
    let config = load(cli, &[])?;
    let a = config.agent.ok_or("the description has no [agent] table")?;
    Ok(PathBuf::from(a.socket))
}

fn run(cli: &Cli) -> Res<ExitCode> {
    let op = match &cli.cmd {
        Cmd::Run { disk, once } => {
            let _lock = keel_agent::lock(&cli.state)?;
            let config = load(cli, &identity(cli)?)?;
            let mut daemon = keel_agent::Daemon::new(&config, &cli.root, &cli.state)?;
            if let Some(d) = disk {
                daemon = daemon.disk(d);
            }
            if *once {
                let boot = daemon.boot()?;
                println!("boot: {boot:?}");
                if matches!(boot, keel_agent::Outcome::FallingBack(_)) {
                    // The reboot command ran: nothing more this boot.
                    return Ok(ExitCode::SUCCESS);
                }
                let check = daemon.check()?;
                println!("check: {check:?}");
                return Ok(ExitCode::SUCCESS);
            }
            let path = cli
                .socket
                .clone()
                .unwrap_or_else(|| daemon.settings().socket.clone());
            let listener = keel_agent::api::bind(&path)?;
            let shared = daemon.shared();
            std::thread::Builder::new()
                .name("keel-agent-api".into())
                .spawn(move || keel_agent::api::serve(listener, shared))?;
            keel_agent::ready();
            keel_agent::watchdog(daemon.shared());
            eprintln!(
                "keel-agent: node {} checks {} every {:?}; API on {}",
                daemon.node_id(),
                daemon.settings().index,
                daemon.settings().interval,
                path.display()
            );
            daemon.run(&keel_io::Cancel::new());
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Status { .. } => "status",
        Cmd::Events => "events",
        Cmd::CheckNow => "check-now",
        Cmd::Pause => "pause",
        Cmd::Resume => "resume",
        Cmd::Metrics => "metrics",
    };
    let answer = keel_agent::api::request(&socket(cli)?, op)?;
    if let Some(e) = answer.get("error").and_then(|e| e.as_str()) {
        return Err(e.into());
    }
    // What the agent says goes to a terminal: no control sequences of its choosing.
    let clean = |s: &str| -> String { s.chars().filter(|c| !c.is_control()).collect() };
    match &cli.cmd {
        Cmd::Status { json: false } => {
            let s: keel_agent::Status = serde_json::from_value(answer)?;
            println!("state:      {}", clean(&s.state));
            println!("version:    {}", clean(s.version.as_deref().unwrap_or("?")));
            if let Some(v) = &s.staged {
                println!("staged:     {}", clean(v));
            }
            if let Some((done, total)) = s.progress {
                println!("progress:   {done}/{total} bytes");
            }
            if s.paused {
                println!("paused:     through the API");
            }
            if let Some(p) = &s.group_paused {
                println!("group:      paused by {}", clean(p));
            }
            if let Some(e) = &s.last_error {
                println!("last error: {}", clean(e));
            }
        }
        Cmd::Events => {
            for e in answer["events"].as_array().into_iter().flatten() {
                println!("{} {}", e["at"], clean(e["what"].as_str().unwrap_or("")));
            }
        }
        Cmd::Metrics => print!("{}", answer["metrics"].as_str().unwrap_or("")),
        _ => println!("{answer}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    keel_io::sys::lean_malloc();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keel-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

//! After a boot: health checks, then commit the booted slot or mark it bad.

use std::process::Command;
use std::time::{Duration, Instant};

use keel_bootflags::{Slot, SlotState};
use keel_io::{ReadAt, WriteAt};

use super::Agent;
use crate::error::Result;
use keel_bootflags::BackendSpec;

/// A check that the booted system is healthy, run by [`Agent::commit`].
pub enum HealthCheck {
    /// A command that must exit 0 within the time limit (killed after it).
    Command {
        /// Shown in reports.
        name: String,
        /// Program and arguments.
        argv: Vec<String>,
        /// Time limit.
        timeout: Duration,
    },
    /// A function that returns an error when unhealthy (its message is the reason
    /// reported; a string converts with `.into()`).
    Func {
        /// Shown in reports.
        name: String,
        /// The check.
        check: Box<dyn Fn() -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>>,
    },
}

impl std::fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HealthCheck::Command {
                name,
                argv,
                timeout,
            } => f
                .debug_struct("Command")
                .field("name", name)
                .field("argv", argv)
                .field("timeout", timeout)
                .finish(),
            HealthCheck::Func { name, .. } => f
                .debug_struct("Func")
                .field("name", name)
                .finish_non_exhaustive(),
        }
    }
}

impl HealthCheck {
    fn name(&self) -> &str {
        match self {
            HealthCheck::Command { name, .. } | HealthCheck::Func { name, .. } => name,
        }
    }

    fn run(&self) -> std::result::Result<(), String> {
        match self {
            HealthCheck::Func { check, .. } => check().map_err(|e| e.to_string()),
            HealthCheck::Command { argv, timeout, .. } => {
                let (prog, args) = argv.split_first().ok_or("no command")?;
                let mut child = Command::new(prog)
                    .args(args)
                    .spawn()
                    .map_err(|e| format!("{prog}: {e}"))?;
                // A limit too far to represent is no limit at all, never a panic.
                let deadline = Instant::now().checked_add(*timeout);
                loop {
                    match child.try_wait().map_err(|e| e.to_string())? {
                        Some(s) if s.success() => return Ok(()),
                        Some(s) => return Err(format!("{prog} exited with {s}")),
                        None if deadline.is_some_and(|d| Instant::now() >= d) => {
                            let _ = child.kill();
                            let _ = child.wait();
                            return Err(format!("{prog} ran past its {timeout:?} limit"));
                        }
                        None => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
        }
    }
}

/// What [`Agent::commit`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Commit {
    /// The booted slot passed its checks and is now marked good.
    Committed(Slot),
    /// The booted slot was already good: nothing to do.
    AlreadyGood(Slot),
    /// A check failed: the booted slot is marked bad; reboot to fall back.
    RebootNeeded {
        /// The slot marked bad.
        slot: Slot,
        /// The check that failed.
        check: String,
        /// Why.
        reason: String,
    },
}

impl<'d, D> Agent<'d, D>
where
    D: ReadAt,
    &'d D: WriteAt,
{
    /// Commit the booted slot after a boot: if it is not yet marked good, run `checks`;
    /// all pass: mark it good; one fails: mark it bad (the boot loader falls back on the
    /// next boot) and say a reboot is needed.
    pub fn commit(&self, checks: &[HealthCheck]) -> Result<Commit> {
        let booted = self.booted_slot()?;
        let mut boot = self.boot_control()?;
        let states = boot.status()?;
        let state = states.get(booted.index()).copied().unwrap_or(SlotState {
            priority: 0,
            tries: 0,
            successful: false,
        });
        // RAUC's GRUB and U-Boot variables cannot tell a committed slot from one being
        // tried (RAUC marks good on every boot): there the checks always run.
        let rauc = matches!(
            self.system.backend,
            BackendSpec::GrubEnv(_) | BackendSpec::Uboot { .. } | BackendSpec::FwEnv(_)
        );
        if state.successful && !rauc {
            return Ok(Commit::AlreadyGood(booted));
        }
        for c in checks {
            if let Err(reason) = c.run() {
                boot.mark_bad(booted)?;
                return Ok(Commit::RebootNeeded {
                    slot: booted,
                    check: c.name().to_string(),
                    reason,
                });
            }
        }
        boot.mark_good(booted)?;
        Ok(Commit::Committed(booted))
    }
}

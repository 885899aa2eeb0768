//! watch: what a capture session profiles (`--pid`, `--all` or a command)
//! and when it stops, shared by `ember record` and `ember top`: the
//! sampler's target filter, starting or watching the target, the stop rule
//! and the notes it leaves for the user.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::capture::Capture;
use crate::export;
use crate::preflight;
use crate::sample::Targets;

/// What to profile.
#[derive(Debug, Clone)]
pub enum What {
    /// Existing processes.
    Pids(Vec<u32>),
    /// Every process on the host.
    All,
    /// A command ember starts, with the processes it forks.
    Command(Vec<String>),
}

/// What a session watches, and its stop rule: the duration, a signal,
/// the command exiting, or every watched process exiting. Each reason
/// becomes a note for the user.
pub struct Target {
    /// When sampling of the target began.
    pub start: Instant,
    /// The command ember started, until it exits.
    child: Option<Child>,
    /// Watched pids still running (`--pid`).
    alive: Vec<u32>,
    pids: bool,
    notes: Vec<String>,
}

impl Target {
    /// Watches the pids, or preloads and starts the command.
    pub fn begin(what: &What, cap: &mut Capture) -> Result<Target> {
        let mut t = Target {
            start: Instant::now(),
            child: None,
            alive: Vec::new(),
            pids: matches!(what, What::Pids(_)),
            notes: Vec::new(),
        };
        match what {
            What::Pids(pids) => {
                for &p in pids {
                    cap.watch(p)?;
                }
                cap.seed_waits(Some(pids));
                t.alive = pids.clone();
                cap.begin();
                t.start = Instant::now();
            }
            What::Command(argv) => {
                cap.preload(find_program(&argv[0]).as_deref());
                cap.begin();
                t.start = Instant::now();
                let c = Command::new(&argv[0])
                    .args(&argv[1..])
                    .spawn()
                    .map_err(|e| {
                        anyhow::anyhow!("cannot run `{}`: {}", argv[0], export::plain_io(&e))
                    })?;
                cap.adopt(c.id());
                t.child = Some(c);
            }
            What::All => {
                cap.seed_waits(None);
                cap.begin();
                t.start = Instant::now();
            }
        }
        Ok(t)
    }

    /// Whether the recording should stop now.
    pub fn done(&mut self, limit: Option<Duration>) -> Result<bool> {
        let secs = self.start.elapsed().as_secs_f64();
        if crate::signal::stop_requested() {
            self.notes
                .push(format!("stopped by signal after {secs:.1} s"));
            return Ok(true);
        }
        if limit.is_some_and(|d| self.start.elapsed() >= d) {
            return Ok(true);
        }
        if let Some(status) = self
            .child
            .as_mut()
            .map(|c| c.try_wait())
            .transpose()?
            .flatten()
        {
            self.notes
                .push(format!("the command exited after {secs:.1} s ({status})"));
            self.child = None;
            return Ok(true);
        }
        let notes = &mut self.notes;
        self.alive.retain(|&p| {
            let up = preflight::is_running(p);
            if !up {
                notes.push(format!(
                    "process {p} exited after {secs:.1} s; writing what was collected"
                ));
            }
            up
        });
        Ok(self.pids && self.alive.is_empty())
    }

    /// The notes for the user. A command stopped early is left running,
    /// as perf does.
    pub fn finish(mut self) -> Vec<String> {
        if let Some(c) = self.child.as_mut() {
            let _ = c.try_wait();
        }
        self.notes
    }
}

/// The sampler's filter for what is profiled.
pub fn targets(what: &What) -> Targets {
    match what {
        What::All => Targets::All,
        // Each PID enters the filter once it is captured and its unwind
        // tables are loaded (`Capture::watch`), so no sample is cut short.
        What::Pids(_) => Targets::Pids {
            pids: vec![],
            parents: vec![],
            follow: false,
        },
        // ember itself is followed, not profiled: the command it forks next is.
        What::Command(_) => Targets::Pids {
            pids: vec![],
            parents: vec![std::process::id()],
            follow: true,
        },
    }
}

/// The file `program` names, searched in PATH like the shell does.
pub fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// What is profiled, for titles and summaries.
pub fn describe(what: &What) -> String {
    match what {
        What::All => format!("all processes on {}", crate::util::hostname()),
        What::Pids(pids) => {
            let names: Vec<String> = pids
                .iter()
                .map(|p| {
                    let comm =
                        std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                    let comm = comm.trim();
                    if comm.is_empty() {
                        format!("pid {p}")
                    } else {
                        format!("pid {p} ({comm})")
                    }
                })
                .collect();
            names.join(", ")
        }
        What::Command(argv) => format!("`{}`", argv.join(" ")),
    }
}

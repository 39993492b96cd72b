//! External programs: [`require_tool`] finds one or says how to install it,
//! [`run`] runs one to completion under a time limit and keeps its output.
//!
//! ```no_run
//! use std::process::Command;
//! use std::time::Duration;
//! use harness::{require_tool, run};
//! let skopeo = require_tool("skopeo", "apt-get install -y skopeo");
//! let ran = run("skopeo --version", Command::new(skopeo).arg("--version"), Duration::from_secs(30));
//! assert!(ran.status.success(), "{}", ran.describe());
//! ```

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The required external tool at `name`, or a panic naming how to install it.
pub fn require_tool(name: &str, install: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| panic!("{name} is not installed; these tests need it: {install}"))
}

/// How a program run by [`run`] ended.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Run {
    /// Status, time and both outputs, for a failure message.
    pub fn describe(&self) -> String {
        format!(
            "{} after {:.1?}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.took, self.stdout, self.stderr
        )
    }
}

/// Runs `command` to completion, killing it after `limit`.
pub fn run(what: &str, command: &mut Command, limit: Duration) -> Run {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let collect = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = collect(Box::new(child.stdout.take().unwrap()));
    let stderr = collect(Box::new(child.stderr.take().unwrap()));
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            break (status, false);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            break (child.wait().expect("reaping a killed child"), true);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let ran = Run {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        took: started.elapsed(),
    };
    assert!(
        !timed_out,
        "{what} did not finish within {limit:?}: {}",
        ran.describe()
    );
    eprintln!("{what}: {} in {:.1?}", ran.status, ran.took);
    ran
}

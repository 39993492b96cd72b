//! C test programs (tests/c/*.c, built on tests/c/checks.h): [`c_plan_met`]
//! judges what one reported against its own plan, and the checkers it runs
//! under: [`C_SANITIZER_FLAGS`] with [`sanitizer_env`], and
//! [`valgrind_command`] with [`assert_valgrind_clean`].
//!
//! ```no_run
//! use std::process::Command;
//! use std::time::Duration;
//! use harness::{c_plan_met, run};
//! let ran = run("api_test", &mut Command::new("target/c/api_test"), Duration::from_secs(600));
//! let planned = c_plan_met(&ran).unwrap_or_else(|why| panic!("{why}\n{}", ran.describe()));
//! assert!(planned > 0);
//! ```

use std::path::Path;
use std::process::Command;

use crate::tools::{require_tool, Run};

/// What a C test program (built on tests/c/checks.h) reported: `Ok` with
/// the number of checks it planned when every one of them ran and passed,
/// else why not. Its last two lines are "plan: N checks" and
/// "P passed, F failed".
pub fn c_plan_met(ran: &Run) -> Result<usize, String> {
    let mut lines = ran.stdout.lines().rev();
    let (tally, plan) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    let planned: usize = plan
        .strip_prefix("plan: ")
        .and_then(|rest| rest.strip_suffix(" checks"))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no \"plan: N checks\" line before the last, got {plan:?}"))?;
    let expected = format!("{planned} passed, 0 failed");
    if planned == 0 || tally != expected || !ran.status.success() {
        return Err(format!(
            "expected exit 0 and a last line {expected:?} (of a plan of more than 0), \
             got {} and {tally:?}",
            ran.status
        ));
    }
    Ok(planned)
}

/// How a C test program is built for its sanitizer run: AddressSanitizer
/// (leaks included) and UBSan, stopping at the first error.
pub const C_SANITIZER_FLAGS: [&str; 4] = [
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
    "-O1",
];

/// The exit code LeakSanitizer and valgrind give a program that leaked:
/// the C programs' forked children may exit with it (`OCI_TEST_LEAK_EXIT`).
pub const C_LEAK_EXIT: &str = "99";

/// Sets what a program built with [`C_SANITIZER_FLAGS`] reads: each
/// checker exits with its own code, leaks with [`C_LEAK_EXIT`].
pub fn sanitizer_env(command: &mut Command) -> &mut Command {
    command
        .env(
            "ASAN_OPTIONS",
            "detect_leaks=1:abort_on_error=0:exitcode=98",
        )
        .env("LSAN_OPTIONS", format!("exitcode={C_LEAK_EXIT}"))
        .env(
            "UBSAN_OPTIONS",
            "print_stacktrace=1:halt_on_error=1:exitcode=97",
        )
        .env("OCI_TEST_LEAK_EXIT", C_LEAK_EXIT)
}

/// `program` under valgrind's memcheck, logging to `log`: errors, and
/// definite or indirect leaks, make it exit [`C_LEAK_EXIT`]; known false
/// positives of the TLS crypto are suppressed (tests/c/valgrind.supp).
pub fn valgrind_command(program: &Path, log: &Path) -> Command {
    require_tool(
        "valgrind",
        "apt-get install -y --no-install-recommends valgrind",
    );
    let mut command = Command::new("valgrind");
    command
        .args([
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--child-silent-after-fork=yes",
            "--num-callers=40",
        ])
        .arg(format!(
            "--suppressions={}/../c/valgrind.supp",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(format!("--error-exitcode={C_LEAK_EXIT}"))
        .arg(format!("--log-file={}", log.display()))
        .arg(program)
        .env("OCI_TEST_LEAK_EXIT", C_LEAK_EXIT);
    command
}

/// Checks the log a [`valgrind_command`] run wrote: no errors, and no byte
/// definitely or indirectly lost.
pub fn assert_valgrind_clean(log: &Path, ran: &Run) {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let with_log = || format!("{}\n--- valgrind log\n{log}", ran.describe());
    assert!(
        log.contains("ERROR SUMMARY: 0 errors"),
        "valgrind found errors: {}",
        with_log()
    );
    for line in log
        .lines()
        .filter(|l| l.contains("definitely lost:") || l.contains("indirectly lost:"))
    {
        assert_eq!(lost_bytes(line), 0, "valgrind: {line}\n{}", with_log());
    }
}

/// The byte count of a leak summary line such as
/// `==123==    definitely lost: 1,024 bytes in 3 blocks`.
fn lost_bytes(line: &str) -> u64 {
    let after = line.split_once("lost:").map_or("", |(_, rest)| rest);
    let number: String = after
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(char::is_ascii_digit)
        .collect();
    number
        .parse()
        .unwrap_or_else(|_| panic!("no byte count in {line:?}"))
}

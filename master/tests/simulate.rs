//! `master simulate` with faults, run as the acceptance check runs it: the binary, its flags,
//! its JSON on stdout. (The simulator starts no processes and opens no sockets.)

use serde_json::Value;
use std::process::Command;

const MASTER: &str = env!("CARGO_BIN_EXE_master");

/// Runs `master simulate ARGS --json`; returns its stdout (checked to be a JSON object).
fn simulate(args: &str) -> (String, Value) {
    let out = Command::new(MASTER)
        .arg("simulate")
        .args(args.split_whitespace())
        .arg("--json")
        .output()
        .expect("master runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "master simulate {args}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&stdout).expect("one JSON object");
    (stdout, v)
}

#[test]
fn delay_and_cut_connections_report_zero_violations_and_every_task_done() {
    let args = "--workers 20 --tasks 2000 --fail-rate 0.01 --drop-rate 0.01 --delay 100ms";
    let (text, v) = simulate(args);
    assert!(text.contains("\"invariant_violations\": 0"), "{text}");
    assert_eq!(v["completed"], 2000, "{text}");
    assert_eq!(v["lost"], 0, "{text}");
    assert!(v["faults"]["connections_cut"].as_u64() > Some(0), "{text}");
    assert_eq!(simulate(args).0, text, "same seed, same bytes");
}

#[test]
fn bad_fault_flags_exit_2() {
    let out = Command::new(MASTER)
        .args(["simulate", "--drop-rate", "2"])
        .output()
        .expect("master runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--drop-rate"), "{err}");
}

/// The acceptance check, verbatim (seed 1), and the same with seeds 2-4, which today
/// each credit old runs to task ids a crash let the master hand out again.
#[test]
fn acceptance_master_crashes_and_drops() {
    let acceptance =
        "--workers 20 --tasks 2000 --fail-rate 0.01 --master-crashes 3 --drop-rate 0.01";
    for seed in 1..=4 {
        let (text, v) = simulate(&format!("{acceptance} --seed {seed}"));
        assert!(
            text.contains("\"invariant_violations\": 0"),
            "seed {seed}: {text}"
        );
        assert_eq!(v["completed"], 2000, "seed {seed}: {text}");
        assert_eq!(v["faults"]["crashes"], 3, "seed {seed}: {text}");
    }
    let (text, _) = simulate(acceptance);
    assert_eq!(simulate(acceptance).0, text, "deterministic for a seed");
}

//! The real binary without NVML: one clear line on stderr, nothing on stdout, exit code 1.

use std::process::{Command, Output};

use privaterouter_gpu_agent::nvml::NvmlReader;

const BIN: &str = env!("CARGO_BIN_EXE_privaterouter-gpu-agent");
const MISSING_LIB: &str = "/nonexistent/libnvidia-ml.so.1";

fn agent(args: &[&str], nvml_lib: Option<&str>) -> Output {
    let mut command = Command::new(BIN);
    command.args(args);
    for var in ["PR_AGENT_ADDR", "PR_AGENT_TOKEN", "PR_AGENT_NODE_NAME", "PR_AGENT_NVML_LIB", "PR_LOG"] {
        command.env_remove(var);
    }
    // Should NVML load after all, the agent must not take a real port.
    command.env("PR_AGENT_ADDR", "127.0.0.1:0");
    if let Some(lib) = nvml_lib {
        command.env("PR_AGENT_NVML_LIB", lib);
    }
    command.output().expect("the agent binary runs")
}

/// Asserts exit code 1, empty stdout and exactly one stderr line starting with `prefix`.
fn assert_one_line_failure(output: &Output, prefix: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stdout, "", "nothing on stdout");
    assert!(stderr.ends_with('\n'), "{stderr:?}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line: {stderr:?}");
    assert!(lines[0].starts_with(prefix), "{stderr:?}");
    lines[0].to_owned()
}

#[test]
fn a_missing_nvml_library_is_one_clear_line_and_exit_1() {
    let output = agent(&[], Some(MISSING_LIB));
    let line = assert_one_line_failure(
        &output,
        "privaterouter-gpu-agent: NVML is not available: /nonexistent/libnvidia-ml.so.1 could \
         not be loaded (is the NVIDIA driver installed? in a container, run with --gpus all): ",
    );
    // The loader's own reason follows, so the operator sees what dlopen said.
    assert!(line.contains("No such file or directory"), "{line}");
}

#[test]
fn the_check_flag_without_nvml_fails_the_same_way() {
    let output = agent(&["--check"], Some(MISSING_LIB));
    assert_one_line_failure(
        &output,
        "privaterouter-gpu-agent: NVML is not available: /nonexistent/libnvidia-ml.so.1 could not be loaded",
    );
}

#[test]
fn the_default_library_on_a_machine_without_nvml() {
    if NvmlReader::open(None).is_ok() {
        eprintln!("NVML is available on this machine: the no-NVML start-up is not observable here");
        return;
    }
    // No library gives "libnvidia-ml.so.1 could not be loaded"; a library without a working
    // driver gives another reason: either way one line, exit 1.
    let line = assert_one_line_failure(&agent(&[], None), "privaterouter-gpu-agent: NVML is not available: ");
    eprintln!("{line}");
}

#[test]
fn empty_variables_mean_the_defaults() {
    // `.env.example` sets every variable, most of them empty.
    let output = Command::new(BIN)
        .arg("--check")
        .env("PR_AGENT_NVML_LIB", MISSING_LIB)
        .env("PR_AGENT_TOKEN", "")
        .env("PR_AGENT_NODE_NAME", "")
        .output()
        .unwrap();
    assert_one_line_failure(&output, "privaterouter-gpu-agent: NVML is not available: /nonexistent/");
    if NvmlReader::open(None).is_err() {
        let output = Command::new(BIN).arg("--check").env("PR_AGENT_NVML_LIB", "").output().unwrap();
        assert_one_line_failure(&output, "privaterouter-gpu-agent: NVML is not available: libnvidia-ml.so.1 ");
    }
}

#[test]
fn help_never_shows_the_token() {
    let output = Command::new(BIN).arg("--help").env("PR_AGENT_TOKEN", "help-must-not-print-this").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("PR_AGENT_TOKEN"), "{help}");
    assert!(!help.contains("help-must-not-print-this"), "{help}");
}

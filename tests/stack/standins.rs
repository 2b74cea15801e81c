//! The two stand-ins the standards allow, as containers on a stack's private network: the
//! OpenAI-compatible upstream (`pr-stubs upstream`, the same code as the API tests' in-process
//! one) and GPU nodes, which run the REAL `privaterouter-gpu-agent` binary over the stand-in NVML
//! library (`services/gpu-agent/tests/fake-nvml/fake_nvml.c`, compiled here with `cc` as the
//! agent's own tests do; two GPUs, utilization 42 % and "not supported").
//!
//! Both binaries are host builds (bookworm glibc) bind-mounted read-only into
//! `privaterouter/base:bookworm`, run as user 10001 under tini: no registry, no image build.

use std::path::{Path, PathBuf};

use privaterouter_tests::images;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt, core::WaitFor};

use crate::harness::{Kit, common, read_only};

/// Where the stand-in upstream listens inside its container.
pub const UPSTREAM_PORT: u16 = 8080;
/// Where a GPU agent listens inside its container.
pub const AGENT_PORT: u16 = 9400;

/// `target/<profile>/` of this test binary (`target/<profile>/deps/stack-<hash>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent().and_then(Path::parent).expect("the test binary lives in target/<profile>/deps").to_path_buf()
}

/// The GPU agent binary of this build (`cargo nextest run --workspace` and `scripts/test` build
/// it; with `-p privaterouter-tests` alone, build it first).
pub fn gpu_agent_binary() -> PathBuf {
    let bin = profile_dir().join("privaterouter-gpu-agent");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p privaterouter-gpu-agent` (scripts/test does)",
        bin.display()
    );
    bin
}

/// Compiles the stand-in NVML library into `dir` (a folder the agent containers may read).
pub fn build_fake_nvml(dir: &Path) -> PathBuf {
    let lib = dir.join("libnvidia-ml.so.1");
    let source = crate::harness::repo_root().join("services/gpu-agent/tests/fake-nvml/fake_nvml.c");
    let status = std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&source)
        .status()
        .expect("a C compiler (cc) builds the fake NVML library");
    assert!(status.success(), "compiling {}", source.display());
    lib
}

fn base(kit: &Kit, service: &str) -> ContainerRequest<GenericImage> {
    common(
        GenericImage::new(images::BASE.name, images::BASE.tag)
            .with_entrypoint("/usr/bin/tini")
            .with_wait_for(WaitFor::message_on_stdout("listening")),
        kit,
        service,
        service,
        &[],
        &[],
    )
    .with_user("10001")
    .with_readonly_rootfs(true)
    .with_cap_drop("ALL")
}

/// The upstream stand-in, reachable from the stack as `http://<kit>-upstream:8080/v1`; it
/// expects `upstream::UPSTREAM_KEY` as the bearer token.
pub fn upstream(kit: &Kit) -> ContainerRequest<GenericImage> {
    base(kit, "upstream")
        .with_mount(read_only(Path::new(env!("CARGO_BIN_EXE_pr-stubs")), "/usr/local/bin/pr-stubs"))
        .with_cmd([
            "--".to_string(),
            "/usr/local/bin/pr-stubs".into(),
            "upstream".into(),
            format!("0.0.0.0:{UPSTREAM_PORT}"),
        ])
}

pub fn upstream_url(kit: &Kit) -> String {
    format!("http://{}-upstream:{UPSTREAM_PORT}/v1", kit.name)
}

/// Points the kit's API replicas at the stand-in upstream (the test catalog, its key), with
/// nginx's per-address limit raised well above what one test sends from one address.
pub fn serve_through_upstream(kit: &mut Kit) {
    kit.nginx_env.extend([("API_RATE_LIMIT".into(), "1000r/s".into()), ("API_RATE_BURST".into(), "1000".into())]);
    let catalog = kit.dir.path().join("models.toml");
    let dead = format!("http://{}-upstream:9/v1", kit.name);
    let toml = privaterouter_tests::upstream::catalog_toml_for(&upstream_url(kit), &dead, "PR_TEST_UPSTREAM_KEY");
    std::fs::write(&catalog, toml).unwrap();
    kit.models_file = Some(catalog);
    kit.api_env.push(("PR_TEST_UPSTREAM_KEY".into(), privaterouter_tests::upstream::UPSTREAM_KEY.into()));
}

/// A GPU node named `node` (container `<kit>-<node>`): the real agent with the stand-in NVML.
pub fn gpu_agent(kit: &Kit, node: &str, fake_nvml: &Path, token: &str) -> ContainerRequest<GenericImage> {
    base(kit, node)
        .with_mount(read_only(&gpu_agent_binary(), "/usr/local/bin/privaterouter-gpu-agent"))
        .with_mount(read_only(fake_nvml, "/opt/fake-nvml/libnvidia-ml.so.1"))
        .with_cmd(["--", "/usr/local/bin/privaterouter-gpu-agent"])
        .with_env_var("PR_AGENT_ADDR", format!("0.0.0.0:{AGENT_PORT}"))
        .with_env_var("PR_AGENT_TOKEN", token)
        .with_env_var("PR_AGENT_NODE_NAME", node)
        .with_env_var("PR_AGENT_NVML_LIB", "/opt/fake-nvml/libnvidia-ml.so.1")
        .with_env_var("PR_LOG", "info")
}

pub fn agent_url(kit: &Kit, node: &str) -> String {
    format!("http://{}-{node}:{AGENT_PORT}", kit.name)
}

/// The last lines of a container's output, for failure messages.
pub async fn tail(name: &str, c: &ContainerAsync<GenericImage>) -> String {
    let mut text = String::from_utf8_lossy(&c.stdout_to_vec().await.unwrap_or_default()).to_string();
    text.push_str(&String::from_utf8_lossy(&c.stderr_to_vec().await.unwrap_or_default()));
    let lines: Vec<&str> = text.lines().rev().take(15).collect();
    let mut out = format!("--- {name} (last lines)\n");
    for line in lines.into_iter().rev() {
        out.push_str(line);
        out.push('\n');
    }
    out
}

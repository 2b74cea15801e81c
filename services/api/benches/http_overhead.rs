//! Telemetry overhead benchmark: the same handler served bare and wrapped in the full public HTTP
//! stack (request id, client address, metrics, access log through the non-blocking writer,
//! timeouts, panic catching), loaded in turn with `wrk` in one run, reporting the ratio.
//!
//!     cargo bench -p privaterouter-api --bench http_overhead
//!
//! Each round starts a fresh server process per variant (a benchmark binary re-executed with
//! `PR_BENCH_SERVE=bare|instrumented`), so all variants run under the same conditions; the order
//! rotates between rounds. The access log is written to /dev/null. Other versions of the
//! middleware are compared in the same run by building this benchmark at their commits and
//! naming the binaries in BENCH_VARIANTS (`name=path,...`): each serves its instrumented stack.
//!
//! Environment: BENCH_SECS (per round, default 8), BENCH_ROUNDS (default 6),
//! BENCH_CONNECTIONS (default 32), BENCH_THREADS (wrk threads, default 1), BENCH_VARIANTS.
//! Requires `wrk`.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use axum::{Router, routing::get};
use privaterouter_api::{Config, http::with_http_stack, telemetry};

async fn handler() -> &'static str {
    "{\"status\":\"ok\"}"
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Child mode: serve one variant on an ephemeral port and print the address.
fn serve(variant: &str) {
    let logging = telemetry::init_logging("warn", Box::new(std::fs::File::create("/dev/null").unwrap()));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let app = Router::new().route("/api/ping", get(handler));
        let app = match variant {
            "bare" => app,
            "instrumented" => {
                telemetry::metrics::install_recorder();
                let config = Config::for_tests("postgres://unused");
                with_http_stack(app, &config, telemetry::AccessLog::new(logging.writer.clone()))
            }
            other => panic!("unknown variant {other}"),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
    });
}

/// A server to load: this binary or another build of this benchmark (`BENCH_VARIANTS`),
/// re-executed in serve mode.
struct Variant {
    name: String,
    exe: PathBuf,
    serve: &'static str,
}

fn spawn_server(variant: &Variant) -> (Child, SocketAddr) {
    let mut child = Command::new(&variant.exe)
        .env("PR_BENCH_SERVE", variant.serve)
        .stdout(Stdio::piped())
        .spawn()
        .expect("re-executing a benchmark binary as a server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (child, line.trim().parse().expect("server prints its address"))
}

fn wrk(addr: SocketAddr, secs: u64, connections: u64, threads: u64) -> f64 {
    let out = Command::new("wrk")
        .args(["-t", &threads.to_string(), "-c", &connections.to_string(), "-d", &format!("{secs}s")])
        .arg(format!("http://{addr}/api/ping"))
        .output()
        .expect("wrk is installed (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Non-2xx"), "wrk saw errors:\n{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("could not read wrk output:\n{text}"))
}

fn measure(variant: &Variant, secs: u64, connections: u64, threads: u64) -> f64 {
    let (mut child, addr) = spawn_server(variant);
    wrk(addr, 1, connections, threads); // warm-up: connections, lazy statics, metric handles
    let rps = wrk(addr, secs, connections, threads);
    child.kill().ok();
    child.wait().ok();
    rps
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Bare and this build's instrumented server, then the instrumented server of each
/// `BENCH_VARIANTS` entry (`name=path,...`).
fn variants() -> Vec<Variant> {
    let this = std::env::current_exe().unwrap();
    let mut all = vec![
        Variant { name: "bare".into(), exe: this.clone(), serve: "bare" },
        Variant { name: "instrumented".into(), exe: this, serve: "instrumented" },
    ];
    for entry in std::env::var("BENCH_VARIANTS").unwrap_or_default().split(',').filter(|e| !e.is_empty()) {
        let (name, path) = entry.split_once('=').expect("BENCH_VARIANTS entries are name=path");
        all.push(Variant { name: name.into(), exe: path.into(), serve: "instrumented" });
    }
    all
}

fn main() {
    if let Ok(variant) = std::env::var("PR_BENCH_SERVE") {
        return serve(&variant);
    }
    let secs = env_or("BENCH_SECS", 8);
    let rounds = env_or("BENCH_ROUNDS", 6);
    let connections = env_or("BENCH_CONNECTIONS", 32);
    let threads = env_or("BENCH_THREADS", 1);
    let variants = variants();
    let names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
    println!("{}: wrk -t{threads} -c{connections} -d{secs}s, {rounds} rounds, order rotating", names.join(" vs "));

    // rps[variant][round]; each round starts with a different variant so none always runs first.
    let mut rps = vec![Vec::new(); variants.len()];
    for round in 0..rounds as usize {
        let mut this_round = vec![0.0; variants.len()];
        for k in 0..variants.len() {
            let v = (round + k) % variants.len();
            this_round[v] = measure(&variants[v], secs, connections, threads);
        }
        let mut line = format!("round {}: bare {:>9.0} req/s", round + 1, this_round[0]);
        for (v, r) in variants.iter().zip(&this_round).skip(1) {
            line += &format!("   {} {r:>9.0} ({:.3})", v.name, r / this_round[0]);
        }
        println!("{line}");
        for (v, r) in this_round.into_iter().enumerate() {
            rps[v].push(r);
        }
    }
    println!("median: bare {:.0} req/s", median(rps[0].clone()));
    for (v, variant) in variants.iter().enumerate().skip(1) {
        let ratios = rps[v].iter().zip(&rps[0]).map(|(i, b)| i / b).collect();
        println!(
            "median: {} {:.0} req/s, median ratio to bare {:.3} (target >= 0.95)",
            variant.name,
            median(rps[v].clone()),
            median(ratios)
        );
    }
}

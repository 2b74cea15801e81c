//! Telemetry overhead benchmark: the same handler served bare and wrapped in the full public HTTP
//! stack (request id, client address, metrics, access log through the non-blocking writer,
//! timeouts, panic catching), loaded alternately with `wrk` in one run, reporting the ratio.
//!
//!     cargo bench -p privaterouter-api --bench http_overhead
//!
//! Each round starts a fresh server process per variant (this binary re-executed with
//! `PR_BENCH_SERVE=bare|instrumented`), so both variants run under identical conditions; the
//! order alternates between rounds. The access log is written to /dev/null.
//!
//! Environment: BENCH_SECS (per round, default 8), BENCH_ROUNDS (default 6),
//! BENCH_CONNECTIONS (default 32), BENCH_THREADS (wrk threads, default 1). Requires `wrk`.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
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

fn spawn_server(variant: &str) -> (Child, SocketAddr) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("PR_BENCH_SERVE", variant)
        .stdout(Stdio::piped())
        .spawn()
        .expect("re-executing the benchmark as a server");
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

fn measure(variant: &str, secs: u64, connections: u64, threads: u64) -> f64 {
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

fn main() {
    if let Ok(variant) = std::env::var("PR_BENCH_SERVE") {
        return serve(&variant);
    }
    let secs = env_or("BENCH_SECS", 8);
    let rounds = env_or("BENCH_ROUNDS", 6);
    let connections = env_or("BENCH_CONNECTIONS", 32);
    let threads = env_or("BENCH_THREADS", 1);
    println!("bare vs instrumented: wrk -t{threads} -c{connections} -d{secs}s, {rounds} rounds, order alternating");

    let (mut bare, mut inst, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (b, i) = if round % 2 == 0 {
            let i = measure("instrumented", secs, connections, threads);
            (measure("bare", secs, connections, threads), i)
        } else {
            let b = measure("bare", secs, connections, threads);
            (b, measure("instrumented", secs, connections, threads))
        };
        println!("round {round}: bare {b:>9.0} req/s   instrumented {i:>9.0} req/s   ratio {:.3}", i / b);
        bare.push(b);
        inst.push(i);
        ratios.push(i / b);
    }
    println!(
        "median: bare {:.0} req/s, instrumented {:.0} req/s, median ratio {:.3} (target >= 0.90)",
        median(bare),
        median(inst),
        median(ratios)
    );
}

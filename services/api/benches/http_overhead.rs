//! Telemetry overhead benchmark: the same handler served bare and wrapped in the full public HTTP
//! stack (request id, client address, metrics, access log to a non-blocking writer, timeouts,
//! panic catching), loaded alternately with `wrk` in one run, reporting the throughput ratio.
//!
//!     cargo bench -p privaterouter-api --bench http_overhead
//!
//! Environment: BENCH_SECS (per round, default 8), BENCH_ROUNDS (default 3),
//! BENCH_CONNECTIONS (default 32), BENCH_THREADS (wrk threads, default 1).
//! Requires `wrk` (Debian package). The access log goes to /dev/null (a real file write).

use std::{net::SocketAddr, process::Command, time::Duration};

use axum::{Router, routing::get};
use privaterouter_api::{Config, routes::with_http_stack, telemetry};

async fn handler() -> &'static str {
    "{\"status\":\"ok\"}"
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

fn wrk(addr: SocketAddr, secs: u64, connections: u64, threads: u64) -> f64 {
    let out = Command::new("wrk")
        .args([
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{secs}s"),
            &format!("http://{addr}/api/ping"),
        ])
        .output()
        .expect("wrk is installed (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("could not read wrk output:\n{text}"));
    assert!(!text.contains("Non-2xx"), "wrk saw errors:\n{text}");
    rps
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let secs = env_or("BENCH_SECS", 8);
    let rounds = env_or("BENCH_ROUNDS", 3);
    let connections = env_or("BENCH_CONNECTIONS", 32);
    let threads = env_or("BENCH_THREADS", 1);

    let logging = telemetry::init_logging(
        "warn",
        Box::new(std::fs::File::create("/dev/null").unwrap()),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (bare, instrumented) = runtime.block_on(async {
        telemetry::metrics::install_recorder();
        let config = Config::for_tests("postgres://unused");
        let app = Router::new().route("/api/ping", get(handler));
        let bare = serve(app.clone()).await;
        let instrumented = serve(with_http_stack(
            app,
            &config,
            telemetry::AccessLog::new(logging.writer.clone()),
        ))
        .await;
        (bare, instrumented)
    });
    // Warm up both (connection setup, lazy statics, metric registration).
    wrk(bare, 2, connections, threads);
    wrk(instrumented, 2, connections, threads);

    let (mut bare_rps, mut inst_rps) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let b = wrk(bare, secs, connections, threads);
        let i = wrk(instrumented, secs, connections, threads);
        println!(
            "round {round}: bare {b:>9.0} req/s   instrumented {i:>9.0} req/s   ratio {:.3}",
            i / b
        );
        bare_rps.push(b);
        inst_rps.push(i);
    }
    let (b, i) = (median(bare_rps), median(inst_rps));
    println!(
        "median: bare {b:.0} req/s, instrumented {i:.0} req/s, ratio {:.3} (target >= 0.90)",
        i / b
    );
    println!("log lines dropped: {}", logging.dropped.dropped_lines());
    std::thread::sleep(Duration::from_millis(100));
    drop(runtime);
}

//! The test stand-ins as a program, so that they can run in a container on a stack's private
//! network (`tests/stack`): today the OpenAI-compatible upstream of `privaterouter_tests::upstream`.
//! GPU nodes need no stand-in here: the stack runs the real GPU agent over a stand-in NVML library.
//!
//! `pr-stubs upstream [ADDR]` serves the upstream on ADDR (default `0.0.0.0:8080`), prints one
//! `listening on ADDR` line when it accepts connections, and runs until killed.

use std::process::ExitCode;

use privaterouter_tests::upstream;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = match args.as_slice() {
        [cmd] if cmd == "upstream" => "0.0.0.0:8080".to_string(),
        [cmd, addr] if cmd == "upstream" => addr.clone(),
        _ => {
            eprintln!("usage: pr-stubs upstream [ADDR]");
            return ExitCode::from(2);
        }
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        let up = upstream::start_on(&addr).await;
        println!("listening on {}", up.addr.expect("bound"));
        std::future::pending::<()>().await;
    });
    ExitCode::SUCCESS
}

use std::{process::ExitCode, sync::Arc, time::Duration};

use clap::Parser;
use privaterouter_gpu_agent::{
    Application, CacheSettings, Config, GpuSource, check, nvml::NvmlReader, startup, telemetry,
};

const NAME: &str = "privaterouter-gpu-agent";

#[derive(Parser)]
#[command(
    name = "privaterouter-gpu-agent",
    version,
    about = "PrivateRouter GPU agent: serves this node's NVML readings over HTTP"
)]
struct Cli {
    #[command(flatten)]
    config: Config,

    /// Read NVML once, print what it reports (and how long a read takes), and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.check {
        return match check::run(&cli.config) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(line) => fail(&line),
        };
    }
    // Without NVML the agent has nothing true to report: one line on stderr, before anything else.
    let reader = match NvmlReader::open(cli.config.nvml_lib()) {
        Ok(reader) => reader,
        Err(line) => return fail(&line),
    };
    let runtime = match startup::runtime() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    telemetry::init_logging(&cli.config.log, Box::new(std::io::stdout()));
    let driver = reader.driver_info();
    tracing::info!(driver_version = %driver.driver_version, nvml_version = %driver.nvml_version, cuda_version = %driver.cuda_version, gpus = driver.gpu_count, "NVML started");

    let gpus = GpuSource::new(Arc::new(reader), CacheSettings::default());
    let result = runtime.block_on(async {
        let app = Application::build(cli.config, gpus).await?;
        app.run_until(startup::shutdown_signal()).await
    });
    // An NVML call stuck in the driver must not keep the process from exiting.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "{NAME} failed");
            ExitCode::FAILURE
        }
    }
}

fn fail(line: &str) -> ExitCode {
    eprintln!("{NAME}: {line}");
    ExitCode::FAILURE
}

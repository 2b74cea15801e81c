use std::process::ExitCode;

use clap::Parser;
use privaterouter_api::{Application, Config, startup::shutdown_signal, telemetry};

#[derive(Parser)]
#[command(
    name = "privaterouter-api",
    version,
    about = "PrivateRouter API server"
)]
struct Cli {
    #[command(flatten)]
    config: Config,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let logging = telemetry::init_logging(&cli.config.log, Box::new(std::io::stdout()));
    let result = async {
        let app = Application::build(cli.config, logging.writer.clone()).await?;
        app.run_until(shutdown_signal()).await
    }
    .await;
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "privaterouter-api failed");
            ExitCode::FAILURE
        }
    };
    drop(logging); // flushes buffered log lines
    code
}

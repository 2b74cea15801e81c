use std::process::ExitCode;

use clap::Parser;
use privaterouter_api::{
    Application, Config,
    cli::{self, Command},
    startup::shutdown_signal,
    telemetry,
};

#[derive(Parser)]
#[command(name = "privaterouter-api", version, about = "PrivateRouter API server")]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    // Subcommands print their result on stdout, so their logs go to stderr.
    let sink: telemetry::LogSink = match command {
        Command::Serve => Box::new(std::io::stdout()),
        Command::Admin(_) => Box::new(std::io::stderr()),
    };
    let logging = telemetry::init_logging(&cli.config.log, sink);
    let result = match command {
        Command::Serve => {
            async {
                let app = Application::build(cli.config, logging.writer.clone()).await?;
                app.run_until(shutdown_signal()).await
            }
            .await
        }
        Command::Admin(admin) => cli::run_admin(&cli.config, admin).await,
    };
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

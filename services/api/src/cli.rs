//! Administrative subcommands, run with the same configuration as the server.

use clap::{Args, Subcommand};
use serde_json::json;

use crate::{
    accounts::{auth::Role, users},
    config::Config,
    db,
};

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the API (the default when no subcommand is given).
    Serve,
    /// Administrative tasks against the database.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Create a user and a first API key; prints {"user_id", "api_key"} as one JSON line on stdout.
    CreateUser(CreateUser),
    /// The credit ledger.
    #[command(subcommand)]
    Ledger(LedgerCommand),
}

#[derive(Subcommand, Debug)]
pub enum LedgerCommand {
    /// Runs the ledger self-check once (balances = sum of rows, held = sum of leases, held
    /// credit covered, no expired lease left); prints the report as JSON and exits non-zero on
    /// any violation.
    Check,
}

#[derive(Args, Debug)]
pub struct CreateUser {
    #[arg(long)]
    pub email: String,
    /// Give the user the admin role.
    #[arg(long)]
    pub admin: bool,
}

pub async fn run_admin(config: &Config, command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::CreateUser(args) => {
            let pool = db::connect(config).await?;
            let role = if args.admin { Role::Admin } else { Role::User };
            let (user_id, api_key) =
                users::create_user(&pool, &args.email, role).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", json!({ "user_id": user_id, "api_key": api_key }));
            Ok(())
        }
        AdminCommand::Ledger(LedgerCommand::Check) => {
            let pool = db::connect(config).await?;
            let report = crate::billing::check::run(&pool).await?;
            println!("{}", json!({ "ok": report.ok(), "violations": report.violations(), "report": report }));
            anyhow::ensure!(report.ok(), "ledger check failed: {}", report.violations().join(", "));
            Ok(())
        }
    }
}

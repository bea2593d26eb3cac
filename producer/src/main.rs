//! `reddot-producer`: serves the producer API; `reddot-producer migrate` only applies
//! database migrations; `reddot-producer healthcheck` asks a running one for `/healthz`.

use std::process::ExitCode;

use reddot_producer::startup::{Application, migrate_only};
use reddot_shared::{
    config::{Service, Settings},
    http, telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(err) => {
            // One readable line with its causes, not a Debug dump with a backtrace.
            eprintln!("reddot-producer: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<ExitCode> {
    let settings =
        Settings::from_env(Service::Producer).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    match std::env::args().nth(1).as_deref() {
        Some("healthcheck") => {
            return Ok(if http::healthcheck(&settings.producer_addr) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Some("migrate") => {
            telemetry::init(settings.log_format);
            migrate_only(&settings).await?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    telemetry::init(settings.log_format);
    Application::build(settings)
        .await?
        .run_until_stopped()
        .await?;
    Ok(ExitCode::SUCCESS)
}

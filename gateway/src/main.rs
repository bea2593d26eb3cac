//! `reddot-gateway`: serves browsers; `reddot-gateway healthcheck` asks a running one
//! for `/healthz`.

use std::process::ExitCode;

use reddot_gateway::startup::Application;
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
            eprintln!("reddot-gateway: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<ExitCode> {
    let settings =
        Settings::from_env(Service::Gateway).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return Ok(if http::healthcheck(&settings.gateway_addr) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    telemetry::init(settings.log_format);
    Application::build(settings)
        .await?
        .run_until_stopped()
        .await?;
    Ok(ExitCode::SUCCESS)
}

//! `reddot-gateway`: serves browsers.

use reddot_gateway::startup::Application;
use reddot_shared::{
    config::{Service, Settings},
    telemetry,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings =
        Settings::from_env(Service::Gateway).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        std::process::exit(if reddot_shared::http::healthcheck(&settings.gateway_addr) { 0 } else { 1 });
    }
    telemetry::init(settings.log_format);
    Application::build(settings)
        .await?
        .run_until_stopped()
        .await
}

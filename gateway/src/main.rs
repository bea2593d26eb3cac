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
    telemetry::init(settings.log_format);
    Application::build(settings)
        .await?
        .run_until_stopped()
        .await
}

//! `reddot-producer`: serves the producer API (default) or, with `migrate`, only applies
//! database migrations and exits.

use reddot_producer::startup::Application;
use reddot_shared::{
    config::{Service, Settings},
    telemetry,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings =
        Settings::from_env(Service::Producer).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        std::process::exit(if reddot_shared::http::healthcheck(&settings.producer_addr) { 0 } else { 1 });
    }
    telemetry::init(settings.log_format);
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        return reddot_producer::startup::migrate_only(&settings).await;
    }
    Application::build(settings)
        .await?
        .run_until_stopped()
        .await
}

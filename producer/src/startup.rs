//! Start-up order: settings → database → migrations → RabbitMQ pool → writer, relay and
//! clean-up tasks → HTTP listener. RabbitMQ need not be up: the relay connects (and
//! reconnects) on its own, and requests are accepted meanwhile.

use std::{
    net::TcpListener,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use actix_web::{App, HttpServer, middleware::from_fn, web};
use anyhow::Context;
use reddot_shared::{amqp, config::Settings, db, http, metrics};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    api_key::ApiKeys,
    cleanup::Cleanup,
    handoff::Handoff,
    relay::Relay,
    routes::{self, AppState},
    writer,
};

pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    shutdown: CancellationToken,
    writer: JoinHandle<anyhow::Result<()>>,
    background: Vec<JoinHandle<anyhow::Result<()>>>,
}

/// `reddot-producer migrate`: apply migrations and exit.
pub async fn migrate_only(settings: &Settings) -> anyhow::Result<()> {
    let db = db::connect(settings)
        .await
        .context("connecting to the database")?;
    db::migrate(&db).await.context("applying migrations")?;
    tracing::info!("migrations applied");
    Ok(())
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        for warning in settings.warnings() {
            tracing::warn!("{warning}");
        }
        metrics::install();
        let db = db::connect(&settings)
            .await
            .context("connecting to the database (REDDOT_DATABASE_URL)")?;
        db::migrate(&db)
            .await
            .context("applying database migrations")?;
        let amqp_pool = amqp::create_pool(&settings.amqp_url).context("REDDOT_AMQP_URL")?;
        // PostgreSQL: the relay's own connections, whose reads by id list go by index
        // even on a young database (see `db::connect_for_index_reads`).
        let relay_db = if settings.is_sqlite() {
            db.clone()
        } else {
            db::connect_for_index_reads(&settings, 2)
                .await
                .context("connecting the relay to the database")?
        };

        let shutdown = CancellationToken::new();
        let handoff = Arc::new(Handoff::default());
        let amqp_ok = Arc::new(AtomicBool::new(false));
        let (writer, writer_task) = writer::writer(db.clone(), handoff.clone());
        let writer_handle = tokio::spawn(writer_task.run(shutdown.child_token()));
        let relay = Relay {
            db: relay_db,
            pool: amqp_pool.clone(),
            handoff,
            poll: settings.relay_poll,
            amqp_ok: amqp_ok.clone(),
            writer: writer.clone(),
            mqtt: settings.mqtt_publish,
            holder: format!(
                "{}-{}-{}",
                settings.node_id,
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
        };
        let cleanup = Cleanup {
            db: db.clone(),
            every: Duration::from_secs(60),
            retention_after_expiry: settings.retention_after_expiry,
        };
        let relay_shutdown = CancellationToken::new();
        let background = vec![
            tokio::spawn(relay.run(relay_shutdown.clone())),
            tokio::spawn(cleanup.run(shutdown.child_token())),
        ];
        // The relay stops only after the writer has committed everything accepted, so
        // that its final flush sees those rows.
        let writer_done = shutdown.clone();
        tokio::spawn(async move {
            writer_done.cancelled().await;
            relay_shutdown.cancel();
        });

        let state = web::Data::new(AppState {
            db,
            writer,
            amqp_pool,
            amqp_ok,
            jwt_secret: settings.jwt_secret.clone(),
            jwt_audience: settings.jwt_audience.clone(),
            max_body_bytes: settings.max_body_bytes,
        });
        let keys = web::Data::new(ApiKeys(settings.api_keys.clone()));
        let listener = TcpListener::bind(&settings.producer_addr)
            .with_context(|| format!("binding REDDOT_PRODUCER_ADDR={}", settings.producer_addr))?;
        let addr = listener.local_addr()?;
        let body_timeout = settings.body_timeout;
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(keys.clone())
                .wrap(http::default_headers())
                .wrap(from_fn(move |req, next| {
                    http::body_deadline(body_timeout, req, next)
                }))
                .wrap(from_fn(http::access_log))
                .configure(routes::configure)
                .default_service(web::to(|req: actix_web::HttpRequest| async move {
                    http::no_route(&req, routes::ROUTES)
                }))
        })
        .listen(listener)?
        .shutdown_timeout(15)
        .run();
        tracing::info!(listening_addr = %addr, "reddot-producer listening");
        Ok(Self {
            port: addr.port(),
            server,
            shutdown,
            writer: writer_handle,
            background,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGINT/SIGTERM, lets in-flight requests finish, commits what they
    /// queued, then gives the relay a few seconds to publish what is left.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.await?;
        tracing::info!("HTTP server stopped; flushing");
        self.shutdown.cancel();
        if let Ok(Err(err)) = self.writer.await {
            tracing::warn!(error = %err, "writer stopped with an error");
        }
        for task in self.background {
            if let Ok(Err(err)) = task.await {
                tracing::warn!(error = %err, "background task stopped with an error");
            }
        }
        tracing::info!("reddot-producer stopped");
        Ok(())
    }
}

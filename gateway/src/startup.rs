//! Start-up order: database → migrations → hub → RabbitMQ consumer (reconnects on its
//! own; the node serves meanwhile) → HTTP listener, which also answers RabbitMQ's HTTP
//! auth backend for MQTT clients (`routes::mqtt_auth`). On SIGTERM/SIGINT every session is
//! ended first, so clients reconnect (to another node) and resume, then the server stops.

use std::{
    net::TcpListener,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use actix_cors::Cors;
use actix_web::{App, HttpServer, http::header, middleware::from_fn, web};
use anyhow::Context;
use reddot_shared::{
    amqp,
    config::Settings,
    db,
    error::{ApiError, ErrorCode},
    http, metrics,
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    amqp::Consumer, connect_limit::ConnectLimiter, hub::Hub, publisher::Publisher, routes,
    session::SessionCtx, state::GatewayState, transport, unread_cache::UnreadCache,
};

pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    shutdown: CancellationToken,
    hub: Arc<Hub>,
    consumer: JoinHandle<anyhow::Result<()>>,
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

        let shutdown = CancellationToken::new();
        let (bind_tx, bind_rx) = mpsc::unbounded_channel();
        let hub = Hub::new(
            bind_tx,
            settings.max_sessions_per_user,
            settings.max_connections,
            settings.unbind_delay,
        );
        tokio::spawn(sweep_bindings(hub.clone(), shutdown.clone()));
        let boot_id = uuid::Uuid::new_v4().simple().to_string();
        let amqp_connected = Arc::new(AtomicBool::new(false));
        let consumer = Consumer {
            url: amqp::with_default_heartbeat(&settings.amqp_url),
            queue: amqp::node_queue_name(&settings.node_id, &boot_id[..12]),
            hub: hub.clone(),
            binds: bind_rx,
            connected: amqp_connected.clone(),
        };
        let consumer = tokio::spawn(consumer.run(shutdown.child_token()));
        let pool = amqp::create_pool(&settings.amqp_url).context("REDDOT_AMQP_URL")?;
        let mqtt_vhost = amqp::vhost_of(&settings.amqp_url)
            .map_err(|e| anyhow::anyhow!("REDDOT_AMQP_URL: {e}"))?;

        let unread_cache = UnreadCache::new(
            db.clone(),
            hub.clone(),
            settings.poll_cache_linger,
            shutdown.clone(),
        );
        let state = web::Data::new(GatewayState {
            db: db.clone(),
            jwt_secret: settings.jwt_secret.clone(),
            jwt_audience: settings.jwt_audience.clone(),
            sessions: Arc::new(SessionCtx {
                db,
                hub: hub.clone(),
                replay_cap: settings.replay_cap,
                buffer: settings.session_buffer,
                heartbeat: settings.heartbeat,
                shutdown: shutdown.clone(),
            }),
            allowed_origins: settings.allowed_origins.clone(),
            amqp_connected,
            publisher: Publisher::new(pool),
            unread_cache,
            mqtt_vhost,
            connect_limiter: ConnectLimiter::new(
                settings.connect_rate_per_ip,
                settings.connect_burst_per_ip,
            ),
            client_ip_header: settings.client_ip_header.clone(),
        });
        let listener = TcpListener::bind(&settings.gateway_addr)
            .with_context(|| format!("binding REDDOT_GATEWAY_ADDR={}", settings.gateway_addr))?;
        let addr = listener.local_addr()?;
        let body_timeout = settings.body_timeout;
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap(cors(state.clone()))
                .wrap(from_fn(cors_errors_as_json))
                .wrap(http::default_headers())
                .wrap(from_fn(move |req, next| {
                    http::body_deadline(body_timeout, req, next)
                }))
                .wrap(from_fn(http::access_log))
                .service(transport::sse::sse_stream)
                .service(transport::ws::ws_stream)
                .service(transport::longpoll::poll)
                .service(transport::poll::unread)
                .service(transport::iframe::iframe_stream)
                .service(routes::inbox::list)
                .service(routes::inbox::mark_read)
                .service(routes::inbox::delete)
                .service(routes::mqtt_auth::service())
                .service(routes::web::index)
                .service(routes::web::client)
                .service(routes::health::healthz)
                .service(routes::health::readyz)
                .service(routes::health::metrics_text)
                .default_service(web::to(|req: actix_web::HttpRequest| async move {
                    http::no_route(&req, ROUTES)
                }))
        })
        // Nagle's algorithm would hold a frame back until the client acknowledged the
        // previous one, and clients delay their acknowledgements (up to 40 ms on
        // Linux): a push server writes each event as soon as it has it.
        .tcp_nodelay(true)
        // A client that closes its end (a tab closed, EventSource.close()) has ended
        // its session: end it when its FIN is read, not at the next heartbeat's write.
        // Until then it held one of the user's REDDOT_MAX_SESSIONS_PER_USER places (up
        // to 15 s of 429s after closing many tabs) and its memory. Browsers never
        // half-close a request and wait for the answer.
        .h1_allow_half_closed(false)
        .listen(listener)?
        .disable_signals()
        .shutdown_timeout(10)
        .run();
        tracing::info!(listening_addr = %addr, node = %settings.node_id, "reddot-gateway listening");
        Ok(Self {
            port: addr.port(),
            server,
            shutdown,
            hub,
            consumer,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let (shutdown, hub) = (self.shutdown.clone(), self.hub.clone());
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("stopping: closing every session so clients resume elsewhere");
            shutdown.cancel();
            hub.close_all();
            handle.stop(true).await;
        });
        self.server.await?;
        self.shutdown.cancel();
        self.hub.close_all();
        if let Ok(Err(err)) = self.consumer.await {
            tracing::warn!(error = %err, "consumer stopped with an error");
        }
        tracing::info!("reddot-gateway stopped");
        Ok(())
    }
}

/// Every route above with its method, so that a known path asked with another method
/// gets `405` and `Allow` rather than a 404 (`http::no_route`).
const ROUTES: http::Routes = &[
    ("/v1/stream", "GET"),
    ("/v1/ws", "GET"),
    ("/v1/poll", "GET"),
    ("/v1/unread", "GET"),
    ("/v1/unread", "HEAD"),
    ("/v1/iframe", "GET"),
    ("/v1/notifications", "GET"),
    ("/v1/notifications/read", "POST"),
    ("/v1/notifications/{id}", "DELETE"),
    ("/mqtt/auth/user", "POST"),
    ("/mqtt/auth/vhost", "POST"),
    ("/mqtt/auth/resource", "POST"),
    ("/mqtt/auth/topic", "POST"),
    ("/", "GET"),
    ("/", "HEAD"),
    ("/reddot.js", "GET"),
    ("/reddot.js", "HEAD"),
    ("/healthz", "GET"),
    ("/healthz", "HEAD"),
    ("/readyz", "GET"),
    ("/readyz", "HEAD"),
    ("/metrics", "GET"),
];

/// CORS for the configured origins (and the gateway's own origin, for the demo page).
/// WebSocket upgrades pass through: their handler answers a foreign origin with 403.
fn cors(state: web::Data<GatewayState>) -> Cors {
    Cors::default()
        .allowed_origin_fn(move |origin, head| {
            let Ok(origin) = origin.to_str() else {
                return false;
            };
            let own = head
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .is_some_and(|host| {
                    origin
                        .strip_prefix("http://")
                        .or_else(|| origin.strip_prefix("https://"))
                        == Some(host)
                });
            state.origin_allowed(origin) || own || head.uri.path() == "/v1/ws"
        })
        .allowed_methods(["GET", "POST", "DELETE", "OPTIONS"])
        // Any request header: pages with browser tracing (Sentry, OpenTelemetry) add
        // `sentry-trace`, `baggage` or `traceparent` to every fetch of an allowed
        // origin, and a list of four refused their preflights, so every call failed.
        // Which origins may call is what guards the API, not which headers they send.
        .allow_any_header()
        // `Retry-After`: how long a client told 429 or 503 should wait.
        .expose_headers([header::ETAG, header::RETRY_AFTER])
        .max_age(3600)
}

/// A request CORS refuses (a preflight from an origin not allowed, say) gets the same
/// JSON error as every other refusal, not actix-cors' plain text; the status stays 400.
async fn cors_errors_as_json(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let res = next.call(req).await?;
    let refusal = res
        .response()
        .error()
        .and_then(|e| e.as_error::<actix_cors::CorsError>())
        .map(ToString::to_string);
    Ok(match refusal {
        Some(message) => {
            let json = actix_web::ResponseError::error_response(&ApiError::new(
                ErrorCode::InvalidRequest,
                message,
            ));
            res.into_response(json)
        }
        None => res.map_into_boxed_body(),
    })
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Drops the bindings of users gone for longer than the unbind delay.
async fn sweep_bindings(hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = every.tick() => hub.sweep(),
            () = shutdown.cancelled() => return,
        }
    }
}

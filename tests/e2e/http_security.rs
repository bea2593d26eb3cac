//! What browsers are told: CORS only for the allowed origins (and never by the producer,
//! which backends call), and the security headers of every HTML page: CSP,
//! `nosniff`, `Referrer-Policy`, and framing denied except for the iframe transport,
//! which only the allowed origin may frame; a known path asked with the wrong method
//! answers 405 with `Allow`; and a body trickled in cannot hold a connection.

use std::time::{Duration, Instant};

use reddot_tests::{Backend, ORIGIN, Service, ServiceKind, Stack, gateway::Gateway};
use reqwest::{Method, StatusCode, header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const EVIL: &str = "http://evil.test";

fn header_of(res: &reqwest::Response, name: header::HeaderName) -> Option<String> {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[tokio::test]
async fn cors_answers_the_allowed_origin_only_and_the_producer_answers_none() -> anyhow::Result<()>
{
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;

    for origin in [ORIGIN, EVIL] {
        let preflight = stack
            .http
            .request(Method::OPTIONS, gw.url("/v1/notifications/read"))
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "authorization,content-type",
            )
            .send()
            .await?;
        let simple = stack
            .http
            .get(gw.url("/v1/unread"))
            .bearer_auth(&token)
            .header(header::ORIGIN, origin)
            .send()
            .await?;
        // The client script too: an allowed site imports it as a module (CORS); others
        // get no CORS header, as on every endpoint.
        let script = stack
            .http
            .get(gw.url("/reddot.js"))
            .header(header::ORIGIN, origin)
            .send()
            .await?;
        let allowed = header_of(&preflight, header::ACCESS_CONTROL_ALLOW_ORIGIN);
        let allowed_simple = header_of(&simple, header::ACCESS_CONTROL_ALLOW_ORIGIN);
        let allowed_script = header_of(&script, header::ACCESS_CONTROL_ALLOW_ORIGIN);
        assert_eq!(script.status(), StatusCode::OK);
        if origin == ORIGIN {
            assert_eq!(preflight.status(), StatusCode::OK);
            assert_eq!(allowed.as_deref(), Some(ORIGIN));
            assert_eq!(allowed_simple.as_deref(), Some(ORIGIN));
            assert_eq!(allowed_script.as_deref(), Some(ORIGIN));
        } else {
            assert_eq!(allowed, None, "preflight from {origin}");
            assert_eq!(allowed_simple, None, "GET from {origin}");
            assert_eq!(allowed_script, None, "reddot.js from {origin}");
        }
        assert_ne!(allowed.as_deref(), Some("*"));
        if origin == EVIL {
            // Refused as every other request is: a JSON error, not plain text.
            assert_eq!(preflight.status(), StatusCode::BAD_REQUEST);
            let body: serde_json::Value = preflight.json().await?;
            assert_eq!(body["error"]["code"], "invalid_request", "{body}");
            assert!(body["error"]["message"].is_string(), "{body}");
        }
    }

    for origin in [ORIGIN, EVIL] {
        let res = stack
            .http
            .post(stack.producer.url("/api/v1/tokens"))
            .bearer_auth(reddot_tests::API_KEY)
            .header(header::ORIGIN, origin)
            .json(&serde_json::json!({"user_id": "alice"}))
            .send()
            .await?;
        assert_eq!(
            header_of(&res, header::ACCESS_CONTROL_ALLOW_ORIGIN),
            None,
            "producer, {origin}"
        );
    }
    Ok(())
}

/// A page of an allowed origin that traces its fetches (Sentry, OpenTelemetry) sends
/// extra headers; its preflights pass, and it may read `ETag` and `Retry-After`.
#[tokio::test]
async fn an_allowed_origin_may_send_tracing_headers_and_read_retry_after() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let asked = "authorization,content-type,traceparent,sentry-trace,baggage,x-requested-with";
    let preflight = |origin: &'static str| {
        stack
            .http
            .request(Method::OPTIONS, gw.url("/v1/notifications/read"))
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, asked)
            .send()
    };

    let allowed = preflight(ORIGIN).await?;
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(
        header_of(&allowed, header::ACCESS_CONTROL_ALLOW_ORIGIN).as_deref(),
        Some(ORIGIN)
    );
    let granted = header_of(&allowed, header::ACCESS_CONTROL_ALLOW_HEADERS).unwrap_or_default();
    for name in asked.split(',') {
        assert!(granted.contains(name), "{name} not in {granted:?}");
    }
    let foreign = preflight(EVIL).await?;
    assert_eq!(foreign.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        header_of(&foreign, header::ACCESS_CONTROL_ALLOW_ORIGIN),
        None
    );

    let token = stack.token("alice").await?;
    let unread = stack
        .http
        .get(gw.url("/v1/unread"))
        .bearer_auth(&token)
        .header(header::ORIGIN, ORIGIN)
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .send()
        .await?;
    assert_eq!(unread.status(), StatusCode::OK);
    let exposed = header_of(&unread, header::ACCESS_CONTROL_EXPOSE_HEADERS)
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(exposed.contains("etag"), "{exposed:?}");
    assert!(exposed.contains("retry-after"), "{exposed:?}");
    Ok(())
}

#[tokio::test]
async fn html_pages_carry_csp_nosniff_and_referrer_policy_and_only_the_iframe_may_be_framed()
-> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;

    let demo = stack.http.get(gw.url("/")).send().await?;
    let admin = stack.http.get(stack.producer.url("/admin")).send().await?;
    let iframe = stack
        .http
        .get(gw.url(&format!("/v1/iframe?origin={ORIGIN}&access_token={token}")))
        .send()
        .await?;

    for (page, res) in [("/", &demo), ("/admin", &admin), ("/v1/iframe", &iframe)] {
        assert_eq!(res.status(), StatusCode::OK, "{page}");
        assert!(
            header_of(res, header::CONTENT_TYPE).is_some_and(|t| t.starts_with("text/html")),
            "{page}"
        );
        assert_eq!(
            header_of(res, header::X_CONTENT_TYPE_OPTIONS).as_deref(),
            Some("nosniff"),
            "{page}"
        );
        assert_eq!(
            header_of(res, header::REFERRER_POLICY).as_deref(),
            Some("no-referrer"),
            "{page}"
        );
        let csp = header_of(res, header::CONTENT_SECURITY_POLICY).unwrap_or_default();
        assert!(csp.starts_with("default-src 'none'"), "{page}: {csp}");
        assert!(!csp.contains("unsafe-eval"), "{page}: {csp}");
        // The iframe stream's scripts are the contract's literal `<script>…</script>`
        // chunks, so they run as inline scripts; every one is written by the gateway
        // with its payload escaped (the iframe test sends a `</script>` title).
        if page != "/v1/iframe" {
            assert!(!csp.contains("unsafe-inline"), "{page}: {csp}");
        }
    }
    for (page, res) in [("/", &demo), ("/admin", &admin)] {
        let csp = header_of(res, header::CONTENT_SECURITY_POLICY).unwrap_or_default();
        assert!(csp.contains("frame-ancestors 'none'"), "{page}: {csp}");
        assert_eq!(
            header_of(res, header::X_FRAME_OPTIONS).as_deref(),
            Some("DENY"),
            "{page}"
        );
    }
    // The iframe transport exists to be framed, by the page's origin only.
    let csp = header_of(&iframe, header::CONTENT_SECURITY_POLICY).unwrap_or_default();
    assert!(csp.contains(&format!("frame-ancestors {ORIGIN}")), "{csp}");
    assert_eq!(header_of(&iframe, header::X_FRAME_OPTIONS), None);

    // JSON answers are not sniffable either, on both services.
    for res in [
        stack.http.get(gw.url("/healthz")).send().await?,
        stack
            .http
            .get(stack.producer.url("/healthz"))
            .send()
            .await?,
    ] {
        assert_eq!(
            header_of(&res, header::X_CONTENT_TYPE_OPTIONS).as_deref(),
            Some("nosniff")
        );
    }
    Ok(())
}

/// A known path asked with the wrong method answers 405 with `Allow` (JSON, like every
/// error); an unknown path, 404.
#[tokio::test]
async fn a_wrong_method_answers_405_with_allow_and_an_unknown_path_404() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let producer = |path: &str| stack.producer.url(path);
    let cases = [
        (Method::GET, producer("/api/v1/notifications"), Some("POST")),
        (Method::DELETE, producer("/api/v1/tokens"), Some("POST")),
        (Method::POST, producer("/healthz"), Some("GET, HEAD")),
        (
            Method::PUT,
            producer("/api/v1/users/alice/unread"),
            Some("GET"),
        ),
        (Method::GET, producer("/api/v1/nothing"), None),
        (Method::POST, gw.url("/v1/stream"), Some("GET")),
        (Method::PUT, gw.url("/v1/notifications/5"), Some("DELETE")),
        (Method::DELETE, gw.url("/v1/unread"), Some("GET, HEAD")),
        (Method::POST, gw.url("/reddot.js"), Some("GET, HEAD")),
        (Method::GET, gw.url("/v2/stream"), None),
    ];
    for (method, url, allow) in cases {
        let res = stack.http.request(method.clone(), &url).send().await?;
        let status = res.status();
        let allowed = header_of(&res, header::ALLOW);
        let body: serde_json::Value = res.json().await?;
        match allow {
            Some(allow) => {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {url}: {body}"
                );
                assert_eq!(allowed.as_deref(), Some(allow), "{method} {url}");
                assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
            }
            None => {
                assert_eq!(status, StatusCode::NOT_FOUND, "{method} {url}: {body}");
                assert_eq!(body["error"]["code"], "not_found", "{body}");
            }
        }
    }
    Ok(())
}

/// HEAD is answered like GET, without the body, where monitors, caches and CDNs ask
/// with it: the demo page, the client script and the unread count (with its ETag, and
/// 304 when it still matches).
#[tokio::test]
async fn head_answers_like_get_without_a_body() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;
    for path in ["/", "/reddot.js"] {
        let get = stack.http.get(gw.url(path)).send().await?;
        let head = stack.http.head(gw.url(path)).send().await?;
        assert_eq!(head.status(), StatusCode::OK, "HEAD {path}");
        assert_eq!(
            header_of(&head, header::CONTENT_TYPE),
            header_of(&get, header::CONTENT_TYPE),
            "HEAD {path}"
        );
        assert!(head.bytes().await?.is_empty(), "HEAD {path} has no body");
    }
    let get = stack
        .http
        .get(gw.url("/v1/unread"))
        .bearer_auth(&token)
        .send()
        .await?;
    let etag = header_of(&get, header::ETAG).expect("GET /v1/unread has an ETag");
    let head = stack
        .http
        .head(gw.url("/v1/unread"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        header_of(&head, header::ETAG).as_deref(),
        Some(etag.as_str())
    );
    assert!(head.bytes().await?.is_empty());
    let unchanged = stack
        .http
        .head(gw.url("/v1/unread"))
        .bearer_auth(&token)
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await?;
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    let anonymous = stack.http.head(gw.url("/v1/unread")).send().await?;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    Ok(())
}

/// Sends `head` (declaring a 1,000-byte body), then one body byte every 200 ms; returns
/// what the server wrote until it closed the connection, and when it closed it.
async fn trickle(port: u16, head: &str) -> anyhow::Result<(String, Duration)> {
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let (mut read, mut write) = stream.into_split();
    write.write_all(head.as_bytes()).await?;
    let writer = tokio::spawn(async move {
        for _ in 0..1000 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(b"a").await.is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let read_all = read.read_to_end(&mut answer);
    let closed = tokio::time::timeout(Duration::from_secs(20), read_all).await;
    writer.abort();
    anyhow::ensure!(closed.is_ok(), "the connection was still open after 20 s");
    Ok((
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    ))
}

/// A client that declares a body and sends a byte now and then (slowloris) is refused
/// and disconnected once REDDOT_BODY_TIMEOUT_SECS pass, on both services; the
/// gateway's MQTT auth endpoints need no credential, so anyone could otherwise hold
/// its connections for hours.
#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off_at_the_body_timeout() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let env = stack.env().with("REDDOT_BODY_TIMEOUT_SECS", "2");
    let gw = Gateway::start_with("node-a", env.clone()).await?;
    let producer = Service::start(ServiceKind::Producer, &env).await?;
    let token = stack.token("alice").await?;
    let heads = [
        (
            gw.port(),
            "POST /mqtt/auth/user HTTP/1.1\r\nHost: x\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n"
                .to_owned(),
        ),
        (
            gw.port(),
            format!(
                "POST /v1/notifications/read HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            ),
        ),
        (
            producer.port,
            format!(
                "POST /api/v1/notifications HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
                reddot_tests::API_KEY
            ),
        ),
    ];
    for (port, head) in heads {
        let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
        let (answer, after) = trickle(port, &head).await?;
        // RabbitMQ's auth backend wants 200 with "allow" or "deny"; the API a 400.
        let refused = if path.starts_with("/mqtt/") {
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("deny")
        } else {
            answer.starts_with("HTTP/1.1 400")
        };
        assert!(refused, "{path}: {answer}");
        assert!(
            after >= Duration::from_millis(1900) && after < Duration::from_secs(10),
            "{path}: closed after {after:?}"
        );
    }
    Ok(())
}

/// No token reaches the gateway's log, however the client spells its query (a raw `?`,
/// an encoded `%3F`, a `;`), and inbox answers are not to be cached.
#[tokio::test]
async fn tokens_never_reach_the_log_and_inbox_answers_are_not_cached() -> anyhow::Result<()> {
    let stack = Stack::start(Backend::Sqlite).await?;
    let gw = Gateway::start(&stack, "node-a").await?;
    let token = stack.token("alice").await?;
    let signature = token.rsplit('.').next().unwrap_or_default().to_owned();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    for path in [
        format!("/v1/notifications?access_token={token}"),
        format!("/v1%2Fnotifications%3Faccess_token={token}"),
        format!("/v1/notifications%3faccess_token={token}"),
        format!("/v1/notifications;access_token={token}"),
        format!("/v1/notifications/1%3Faccess_token={token}"),
    ] {
        let res = http.get(gw.url(&path)).send().await?;
        assert!(res.status().as_u16() < 500, "{path}: {}", res.status());
    }
    let inbox = http
        .get(gw.url("/v1/notifications"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(inbox.status(), StatusCode::OK);
    assert_eq!(
        header_of(&inbox, header::CACHE_CONTROL).as_deref(),
        Some("no-store")
    );
    // The access log line of the last request is written once it is answered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = gw.logs();
    assert!(
        logs.contains("/v1/notifications"),
        "the requests are logged"
    );
    assert!(
        !logs.contains(&signature),
        "a token reached the log:\n{logs}"
    );
    Ok(())
}

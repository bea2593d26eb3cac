//! `soak`: minutes of steady targeted and broadcast traffic while SSE sessions drop and
//! resume from their last id at random. Passes only if every session received every
//! notification meant for it exactly once; prints the gateway's RSS at the start, the
//! middle and the end, which should stay flat, and once a minute on stderr (the whole
//! series is in the JSON line), so that a long run shows whether growth levels off.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use rand::Rng;
use serde_json::{Value, json};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    clients, report,
    scenarios::{Opts, deploy, ensure_clean, name},
};

/// Who a posted notification is for.
enum Target {
    User(usize),
    All,
}

pub async fn soak(opts: &Opts, minutes: Option<f64>) -> anyhow::Result<()> {
    let duration = match (minutes, opts.quick) {
        (Some(m), _) => Duration::from_secs_f64(m * 60.0),
        (None, true) => Duration::from_secs(20),
        (None, false) => Duration::from_secs(300),
    };
    let (sessions, targeted_per_s, broadcast_every, reconnects_per_s) = if opts.quick {
        (100, 20.0, Duration::from_secs(2), 5.0)
    } else {
        (1000, 100.0, Duration::from_secs(1), 20.0)
    };
    let backend = opts.backend();
    let d = deploy(backend, true).await?;
    let gateway = d
        .gateway
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no gateway"))?;
    let port = gateway.port;

    let (tx, mut rx) = mpsc::unbounded_channel::<clients::Received>();
    let mut readers: Vec<JoinHandle<()>> = Vec::with_capacity(sessions);
    for i in 0..sessions {
        readers.push(clients::sse(port, i, &token(i), Some(0), tx.clone()).await?);
    }
    let rss_start = gateway.rss_kib();

    // The backend: targeted posts at a steady rate, a broadcast every `broadcast_every`.
    let create_url = d.producer.url("/api/v1/notifications");
    let posting = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut posted: Vec<(i64, Target)> = Vec::new();
        let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / targeted_per_s));
        let started = Instant::now();
        let mut last_broadcast = started;
        while started.elapsed() < duration {
            every.tick().await;
            let (body, target) = if last_broadcast.elapsed() >= broadcast_every {
                last_broadcast = Instant::now();
                (
                    json!({"to": {"all": true}, "title": "soak broadcast"}),
                    Target::All,
                )
            } else {
                let user = rand::rng().random_range(0..sessions);
                (
                    json!({"to": {"users": [format!("u{user}")]}, "title": "soak"}),
                    Target::User(user),
                )
            };
            let res = http
                .post(&create_url)
                .bearer_auth(reddot_tests::API_KEY)
                .json(&body)
                .send()
                .await?;
            let status = res.status();
            let v: Value = res.json().await?;
            anyhow::ensure!(status == 201, "post failed: {v}");
            posted.push((v["id"].as_i64().unwrap_or_default(), target));
        }
        Ok::<_, anyhow::Error>(posted)
    });

    // Meanwhile sessions drop and resume with the last id they saw.
    let mut got: Vec<Vec<i64>> = vec![Vec::new(); sessions];
    let mut reconnects = 0u64;
    let mut rss_middle = None;
    let mut rss_per_minute = Vec::new();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / reconnects_per_s));
    let mut minute = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(60),
        Duration::from_secs(60),
    );
    while !posting.is_finished() {
        tokio::select! {
            Some((s, id, _)) = rx.recv() => got[s].push(id),
            _ = minute.tick() => {
                let rss = gateway.rss_kib();
                rss_per_minute.push(rss);
                let received: usize = got.iter().map(Vec::len).sum();
                eprintln!(
                    "soak: {} min, gateway RSS {} MiB, {received} deliveries, {reconnects} reconnects",
                    rss_per_minute.len(),
                    mib(rss)
                );
            }
            _ = tick.tick() => {
                let s = rand::rng().random_range(0..sessions);
                readers[s].abort();
                let _ = (&mut readers[s]).await;
                // Everything the old connection read is in the channel now: take it, so
                // the resume cursor is exact.
                while let Ok((s, id, _)) = rx.try_recv() {
                    got[s].push(id);
                }
                let last = got[s].last().copied().unwrap_or(0);
                readers[s] = clients::sse(port, s, &token(s), Some(last), tx.clone()).await?;
                reconnects += 1;
                if rss_middle.is_none() && started.elapsed() >= duration / 2 {
                    rss_middle = gateway.rss_kib();
                }
            }
        }
    }
    let posted = posting.await??;

    // Expected per session: its targeted ones and every broadcast, in id order.
    let mut expected: Vec<Vec<i64>> = vec![Vec::new(); sessions];
    for (id, target) in &posted {
        match target {
            Target::User(u) => expected[*u].push(*id),
            Target::All => expected.iter_mut().for_each(|e| e.push(*id)),
        }
    }
    let want: usize = expected.iter().map(Vec::len).sum();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.iter().map(Vec::len).sum::<usize>() < want {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some((s, id, _))) => got[s].push(id),
            _ => break,
        }
    }
    let rss_end = gateway.rss_kib();
    for r in &readers {
        r.abort();
    }

    let (mut lost, mut dup, mut foreign, mut out_of_order) = (0usize, 0usize, 0usize, 0usize);
    for (exp, recv) in expected.iter().zip(&got) {
        let exp_set: HashSet<i64> = exp.iter().copied().collect();
        let mut seen = HashSet::new();
        for id in recv {
            if !seen.insert(*id) {
                dup += 1;
            } else if !exp_set.contains(id) {
                foreign += 1;
            }
        }
        lost += exp_set.difference(&seen).count();
        out_of_order += recv.windows(2).filter(|w| w[0] >= w[1]).count();
    }
    report::table(
        &format!(
            "soak — {sessions} SSE sessions for {:.0} s, {targeted_per_s}/s targeted + a broadcast every {broadcast_every:?}, {reconnects_per_s}/s random resumes",
            duration.as_secs_f64()
        ),
        &[
            "database",
            "posted",
            "deliveries",
            "reconnects",
            "lost",
            "dup",
            "foreign",
            "out of order",
            "gateway RSS MiB start / middle / end",
        ],
        &[vec![
            name(backend).into(),
            posted.len().to_string(),
            want.to_string(),
            reconnects.to_string(),
            lost.to_string(),
            dup.to_string(),
            foreign.to_string(),
            out_of_order.to_string(),
            format!(
                "{} / {} / {}",
                mib(rss_start),
                mib(rss_middle),
                mib(rss_end)
            ),
        ]],
    );
    let results = vec![json!({
        "db": name(backend), "sessions": sessions, "seconds": duration.as_secs_f64(),
        "posted": posted.len(), "deliveries": want, "reconnects": reconnects,
        "lost": lost, "duplicated": dup + foreign + out_of_order,
        "rss_kib": [rss_start, rss_middle, rss_end], "rss_kib_per_minute": rss_per_minute,
    })];
    report::json("soak", Value::Array(results.clone()));
    ensure_clean(&results)
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("?".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn token(session: usize) -> String {
    clients::mint(&format!("u{session}"), 3600)
}

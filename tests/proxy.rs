//! A TCP proxy the test can cut and restore, pause and resume, or make a black hole:
//! stands between a
//! service and RabbitMQ (or PostgreSQL) to simulate the dependency going away, or
//! stalling, without touching the shared server.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
};

pub struct Proxy {
    pub addr: String,
    up: Arc<AtomicBool>,
    sinking: Arc<AtomicBool>,
    /// Connections accepted so far, refused ones included.
    attempts: Arc<AtomicU64>,
    cut: watch::Sender<u64>,
    paused: watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(target: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let up = Arc::new(AtomicBool::new(true));
        let sinking = Arc::new(AtomicBool::new(false));
        let sink = sinking.clone();
        let (cut, cuts) = watch::channel(0u64);
        let (paused, pauses) = watch::channel(false);
        let target = target.to_owned();
        let accepting = up.clone();
        let attempts = Arc::new(AtomicU64::new(0));
        let counted = attempts.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                if sink.load(Ordering::SeqCst) {
                    // Held open and never answered, until the client gives up.
                    tokio::spawn(async move {
                        let mut inbound = inbound;
                        let mut buf = [0u8; 4096];
                        while matches!(inbound.read(&mut buf).await, Ok(n) if n > 0) {}
                    });
                    continue;
                }
                if !accepting.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let mut cuts = cuts.clone();
                cuts.borrow_and_update();
                let pauses = pauses.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::select! {
                        _ = futures_util::future::join(
                            pipe(in_read, out_write, pauses.clone()),
                            pipe(out_read, in_write, pauses),
                        ) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            up,
            sinking,
            attempts,
            cut,
            paused,
        })
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    /// How many connections were attempted through the proxy so far.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::SeqCst)
    }

    /// Accepts connections again, and passes them on.
    pub fn restore(&self) {
        self.sinking.store(false, Ordering::SeqCst);
        self.up.store(true, Ordering::SeqCst);
    }

    /// Accepts new connections but never answers them (a hung endpoint); they stay so
    /// after [`Proxy::restore`], until their client closes them.
    pub fn sink(&self) {
        self.sinking.store(true, Ordering::SeqCst);
    }

    /// Holds every byte in both directions, keeping the connections open.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Passes on what was held, in order, and everything after it.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }
}

/// Copies one direction until either side closes; while paused, holds what it read.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut paused: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if paused.wait_for(|p| !*p).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

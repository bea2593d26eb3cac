//! `floor`: the most this machine allows for `broadcast`'s "one after another" row, with
//! no push server at all. Two threads (as many as the gateway's HTTP workers) each own
//! half of 10,000 loopback connections and write one SSE frame, of the size Reddot
//! sends, to each in turn; the bench's own SSE readers read them, exactly as in
//! `broadcast`. What is left is the kernel's cost of one write and one read per delivery
//! and the load generator: Reddot's row over this one is the share its own work takes.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{Arc, mpsc as std_mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;

use reddot_shared::{
    domain::{Audience, Notification},
    time::now_ms,
};
use serde_json::{json, value::RawValue};
use tokio::sync::mpsc;

use crate::{
    report,
    scenarios::{Opts, Tally, open_sse_from},
};

const WRITERS: usize = 2;

/// The first argument that makes `reddot-bench` the server end of `floor`.
pub const SERVER_ARG: &str = "floor-server";

pub async fn floor(opts: &Opts) -> anyhow::Result<()> {
    let (sessions, count) = if opts.quick { (200, 20) } else { (10_000, 100) };
    // The server end in a process of its own, as the gateway is: both ends of 10,000
    // connections would not fit one process's descriptor limit.
    // `/proc/self/exe`, not the path: the harness's workspace build may have replaced the
    // file since this process started, and the link still names the binary that runs.
    let exe = if cfg!(target_os = "linux") {
        "/proc/self/exe".into()
    } else {
        std::env::current_exe()?
    };
    let mut server = Command::new(exe)
        .args([SERVER_ARG, &sessions.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut commands = server.stdin.take().context("server stdin")?;
    let mut announced = String::new();
    BufReader::new(server.stdout.take().context("server stdout")?).read_line(&mut announced)?;
    let port: u16 = announced
        .trim()
        .parse()
        .with_context(|| format!("the floor server said {announced:?}"))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    open_sse_from(port, sessions, &HashMap::new(), tx).await?;

    let started = Instant::now();
    let mut tally = Tally::new(sessions, count, started);
    for id in 1..=count as i64 {
        tally.posted(id, Instant::now());
        writeln!(commands, "{id}")?;
        commands.flush()?;
        tally.receive_until(&mut rx, id as usize * sessions).await?;
    }
    drop(commands);
    anyhow::ensure!(server.wait()?.success(), "the floor server failed");
    let elapsed = tally.last.duration_since(started).as_secs_f64();
    let expected = sessions * count;
    let (lost, dup) = (expected - tally.distinct, tally.duplicated());
    let rate = tally.distinct as f64 / elapsed;
    let h = &tally.latency;
    report::table(
        &format!(
            "floor — {count} frames, each after the last reached all, to {sessions} SSE readers; {WRITERS} threads writing, no server"
        ),
        &[
            "deliveries/s",
            "all delivered after s",
            "p50 ms",
            "p99 ms",
            "lost",
            "dup",
        ],
        &[vec![
            format!("{rate:.0}"),
            format!("{elapsed:.2}"),
            format!("{:.1}", report::ms(h, 0.5)),
            format!("{:.1}", report::ms(h, 0.99)),
            lost.to_string(),
            dup.to_string(),
        ]],
    );
    let result = json!({"sessions": sessions, "frames": count, "writers": WRITERS,
        "deliveries_per_s": rate, "seconds": elapsed, "p50_ms": report::ms(h, 0.5),
        "p99_ms": report::ms(h, 0.99), "lost": lost, "duplicated": dup});
    report::json("floor", json!([result.clone()]));
    crate::scenarios::ensure_clean(&[result])
}

/// The server end (`reddot-bench floor-server <n>`, started by [`floor`]): prints its
/// port, accepts `n` SSE requests, then writes the frame of each id read from stdin to
/// every connection, split over [`WRITERS`] threads, until stdin closes.
pub fn serve(n: usize) -> anyhow::Result<()> {
    // A deep accept queue: std's 128 overflows when hundreds of clients connect at once.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(([127, 0, 0, 1], 0).into())?;
    let listener = socket.listen(4096)?.into_std()?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    let mut shares: Vec<Vec<TcpStream>> = (0..WRITERS).map(|_| Vec::new()).collect();
    for (i, stream) in accept(&listener, n)?.into_iter().enumerate() {
        shares[i % WRITERS].push(stream);
    }
    let (rounds, writers): (Vec<_>, Vec<_>) = shares
        .into_iter()
        .map(|share| {
            let (round_tx, round_rx) = std_mpsc::channel::<Arc<Vec<u8>>>();
            (
                round_tx,
                thread::spawn(move || write_rounds(share, &round_rx)),
            )
        })
        .unzip();
    for line in std::io::stdin().lines() {
        let chunk = Arc::new(chunk(line?.trim().parse()?)?);
        for round in &rounds {
            round.send(chunk.clone())?;
        }
    }
    drop(rounds);
    for writer in writers {
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
    }
    Ok(())
}

/// Accepts `n` connections and answers each request with an SSE response head; gives
/// up when none came for 10 s (the clients failed).
fn accept(listener: &TcpListener, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut streams = Vec::with_capacity(n);
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let mut last = Instant::now();
    while streams.len() < n {
        let mut stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                anyhow::ensure!(
                    last.elapsed() < Duration::from_secs(10),
                    "only {} of {n} clients connected",
                    streams.len()
                );
                thread::sleep(Duration::from_millis(1));
                continue;
            }
            Err(e) => return Err(anyhow::Error::new(e).context("accepting a client")),
        };
        last = Instant::now();
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        head.clear();
        while !head.ends_with(b"\r\n\r\n") {
            let read = stream.read(&mut buf)?;
            anyhow::ensure!(read > 0, "a client closed before its request was read");
            head.extend_from_slice(&buf[..read]);
        }
        stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        )?;
        streams.push(stream);
    }
    Ok(streams)
}

/// Writes each chunk received to every stream, in turn, until the sender is dropped.
fn write_rounds(
    mut streams: Vec<TcpStream>,
    rounds: &std_mpsc::Receiver<Arc<Vec<u8>>>,
) -> anyhow::Result<()> {
    for chunk in rounds {
        for stream in &mut streams {
            stream.write_all(&chunk)?;
        }
    }
    Ok(())
}

/// The chunk the gateway writes for a broadcast with this id: the same SSE frame, the
/// same JSON, the same chunked encoding.
fn chunk(id: i64) -> anyhow::Result<Vec<u8>> {
    let n = Notification {
        id,
        kind: "system".into(),
        title: "broadcast".into(),
        body: String::new(),
        data: RawValue::from_string("{}".into())?,
        sender: None,
        audience: Audience::All,
        created_at: now_ms(),
        expires_at: None,
    };
    let frame = format!("event: notification\nid: {id}\ndata: {}\n\n", n.to_json());
    Ok(format!("{:x}\r\n{frame}\r\n", frame.len()).into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_one_sse_event_in_chunked_encoding() -> anyhow::Result<()> {
        let chunk = String::from_utf8(chunk(42)?)?;
        let (size, rest) = chunk.split_once("\r\n").unwrap_or_default();
        let frame = rest.strip_suffix("\r\n").unwrap_or_default();
        assert_eq!(usize::from_str_radix(size, 16)?, frame.len());
        assert!(frame.starts_with("event: notification\nid: 42\ndata: {\"id\":42,"));
        assert!(frame.ends_with("}\n\n"));
        Ok(())
    }
}

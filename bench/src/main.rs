//! `reddot-bench`: load scenarios against real release builds of the producer and the
//! gateway, on the local RabbitMQ and PostgreSQL or SQLite. Each prints a markdown
//! table and a JSON line; a run that loses or duplicates a delivery fails.
//!
//! `cargo run --release -p reddot-bench -- <scenario> [--quick] [--db sqlite|postgres] [--clients N]`
//! (`floor` runs no Reddot at all: the machine's own limit for `broadcast`)
//! (`soak` also takes `--minutes M`, default 5; 20 s under `--quick`)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod clients;
mod floor;
mod report;
mod scenarios;
mod soak;

use anyhow::bail;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [first, n] = &args[..]
        && first == floor::SERVER_ARG
    {
        raise_fd_limit();
        return tokio::task::spawn_blocking({
            let n = n.parse()?;
            move || floor::serve(n)
        })
        .await?;
    }
    // On a worker rather than on the main thread: every delivery the client reads is
    // sent to the scenario's task, and waking a parked main thread for each costs the
    // load generator a futex call and a context switch per delivery.
    tokio::spawn(run(args)).await?
}

async fn run(args: Vec<String>) -> anyhow::Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let db = args
        .windows(2)
        .find(|w| w[0] == "--db")
        .map(|w| w[1].as_str());
    let clients = args
        .windows(2)
        .find(|w| w[0] == "--clients")
        .map(|w| w[1].parse::<usize>())
        .transpose()?;
    let minutes = args
        .windows(2)
        .find(|w| w[0] == "--minutes")
        .map(|w| w[1].parse::<f64>())
        .transpose()?;
    raise_fd_limit();
    let Some(scenario) = args.first() else {
        bail!(
            "usage: reddot-bench <produce|targeted|broadcast|floor|storm|idle|poll|soak|all> [--quick] [--db sqlite|postgres] [--clients N] [--minutes M]"
        );
    };
    let opts = scenarios::Opts {
        quick,
        db: db.map(str::to_owned),
        clients,
    };
    let one = [scenario.as_str()];
    let names: &[&str] = match scenario.as_str() {
        // soak joins `all` under --quick (20 s); its full length (5 min) is run on its own.
        "all" if opts.quick => &[
            "produce",
            "targeted",
            "broadcast",
            "floor",
            "storm",
            "poll",
            "soak",
            "idle",
        ],
        "all" => &[
            "produce",
            "targeted",
            "broadcast",
            "floor",
            "storm",
            "poll",
            "idle",
        ],
        _ => &one,
    };
    for name in names {
        let before = report::CpuTimes::now();
        match *name {
            "produce" => scenarios::produce(&opts).await?,
            "latency" | "targeted" => scenarios::latency(&opts).await?,
            "idle" => scenarios::idle(&opts).await?,
            "broadcast" => scenarios::broadcast(&opts).await?,
            "floor" => floor::floor(&opts).await?,
            "poll" => scenarios::poll(&opts).await?,
            "storm" => scenarios::storm(&opts).await?,
            "soak" => soak::soak(&opts, minutes).await?,
            other => bail!("unknown scenario {other}"),
        }
        report::machine(name, before);
    }
    Ok(())
}

/// Thousands of sockets need more than the usual 1,024 descriptors (children inherit it);
/// `floor` holds both ends of 10,000 connections. Above the hard limit only if allowed.
fn raise_fd_limit() {
    const WANTED: u64 = 65_536;
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let wanted = hard.max(WANTED);
        if rlimit::Resource::NOFILE.set(wanted, wanted).is_err() {
            let _ = rlimit::Resource::NOFILE.set(hard, hard);
        }
    }
}
